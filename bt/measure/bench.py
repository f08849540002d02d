"""The `bt-bench` matrix: guests x modes -> one row per run, with fidelity verdicts
and modelled costs; CSV, JSON, a terminal table and PNG charts.

Rows hold counters only (plus wall time and MIPS, which are the only
non-deterministic columns), so two runs over the same inputs give identical rows
apart from `wall_s` and `guest_mips`.
"""
from __future__ import annotations

import csv
import json
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from bt import costmodel, interrupt
from bt.measure import executors
from bt.measure.sweep import Sweep
from bt.measure.fidelity import compare
from bt.measure.observe import run
from bt.mode import MODES, Mode
from bt.outcome import Outcome

NONDETERMINISTIC = ("wall_s", "guest_mips")
EXIT_KINDS = ("io_exits", "cpuid_exits", "faults_emulated", "faults_reflected",
              "interrupts_injected", "exceptions_delivered", "scan_exits", "stub_exits",
              "halts")
COLUMNS = ("guest", "mode", "status", "reason", "retired", "exits", *EXIT_KINDS,
           "exits_per_million", "patches", "wall_s", "guest_mips", "fidelity",
           "model_cycles", "vtx_model_cycles", "vtx_exits")


def _total(counters: dict, name: str) -> int:
    v = counters.get(name, 0)
    return sum(v.values()) if isinstance(v, dict) else int(v)


def row_for(guest: str, obs, params: costmodel.CostParams) -> dict:
    mode = Mode.parse(obs.mode)
    exits = _total(obs.counters, "exits")
    patches = obs.extra.get("patches", {}) if obs.extra else {}
    row = {"guest": guest, "mode": mode, "status": obs.exit_status, "reason": obs.reason,
           "retired": obs.retired, "exits": exits}
    for k in EXIT_KINDS:
        row[k] = _total(obs.counters, k)
    row["exits_per_million"] = round(exits * 1e6 / obs.retired, 3) if obs.retired else 0.0
    row["patches"] = sum(patches.get("installed", {}).values()) if patches else 0
    row["wall_s"] = round(obs.wall, 3)
    row["guest_mips"] = round(obs.retired / obs.wall / 1e6, 2) if obs.wall > 0 else 0.0
    row["fidelity"] = "reference" if mode.is_reference else ""
    row["model_cycles"] = round(costmodel.cycles(mode, obs.retired, obs.counters, params))
    row["vtx_model_cycles"] = ""
    row["vtx_exits"] = ""
    if mode is Mode.TRAP:
        row["vtx_model_cycles"] = round(costmodel.cycles("vtx", obs.retired, obs.counters, params))
        row["vtx_exits"] = sum(costmodel.vtx_exits(obs.counters).values())
    return row


@dataclass(frozen=True)
class GuestTask:
    """One guest at one machine setting with all its modes: the unit a worker
    runs (bt/measure/executors.py), so the reference run's RAM never leaves it.
    `points` are the (row-order index, swept values, cost parameters) to price
    its runs at; `order` its guest's position in the matrix."""

    order: int
    name: str
    config: object
    modes: tuple
    points: tuple


def guest_rows(task: GuestTask, image, progress=None) -> list[tuple[tuple, dict]]:
    """Run `image` under each of the task's modes: ((order key), row) per mode and
    point, in row order.  `progress(label)` is called before each run.  A run that
    Ctrl-C or SIGTERM stopped raises `bt.interrupt.Interrupted` (its figures are
    partial) carrying the rows of the runs before it as `.rows`."""
    out: list = []
    try:
        _runs(task, image, progress, out)
    except interrupt.Interrupted as e:
        e.rows = sorted(out, key=lambda kr: kr[0])
        raise
    return sorted(out, key=lambda kr: kr[0])


def _runs(task: GuestTask, image, progress, out: list) -> None:
    ref = None
    for m, mode in enumerate(task.modes):
        if progress:
            progress(f"{task.name} {mode}")
        obs = run(image, task.config, mode, task.config.max_instructions, keep_ram=True)
        if obs.reason == Outcome.INTERRUPTED:
            raise interrupt.Interrupted(obs.exit_status - 128)
        if mode.is_reference:
            verdict = "reference"
            ref = obs
        elif ref is not None:
            verdict = compare(image, task.config, mode, locate=False,
                              reference=ref, other=obs).verdict
        else:
            verdict = "not compared"
        obs.ram = None
        for index, values, params in task.points:
            row = row_for(task.name, obs, params)
            row["fidelity"] = verdict
            out.append(((task.order, index, m), {"guest": task.name, **values, **row}))


def run_matrix(guests: list[tuple[str, object]], config, modes=MODES,
               params: costmodel.CostParams = costmodel.CostParams(), progress=None,
               executor=None, sweep: Sweep = Sweep()) -> list[dict]:
    """guests: (name, GuestImage) pairs.  `progress(done, total, label)` is called
    as runs start (in this process) or tasks end (in workers), and once at the end.
    executor: None (this process), N (N local worker processes), a Dask scheduler
    address or a `distributed.Client` (bt/measure/executors.py).  sweep: more
    matrix dimensions (bt/measure/sweep.py), as columns of their own."""
    return list(iter_matrix(guests, config, modes, params, progress, executor, sweep))


def tasks_for(guests, config, modes, params, sweep: Sweep) -> list[tuple[GuestTask, object]]:
    """The matrix as (task, image) pairs, in row order."""
    modes = tuple(Mode.parse(m) for m in modes)
    points = sweep.points()
    out = []
    for g, (name, image) in enumerate(guests):
        for machine in sweep.machine_points():
            cfg, _ = sweep.apply(config, params, machine)
            mine = tuple((i, p, sweep.apply(config, params, p)[1]) for i, p in enumerate(points)
                         if all(p[n] == v for n, v in machine.items()))
            out.append((GuestTask(g, name, cfg, modes, mine), image))
    return out


def iter_matrix(guests: list[tuple[str, object]], config, modes=MODES,
                params: costmodel.CostParams = costmodel.CostParams(), progress=None,
                executor=None, sweep: Sweep = Sweep()):
    """The rows of `run_matrix` in matrix order (guest, sweep point, mode), each
    as soon as it and every row before it are done.  A stop (Ctrl-C, SIGTERM)
    raises `bt.interrupt.Interrupted` after yielding every row whose task was
    complete, so the caller keeps them; a stopped run yields none."""
    tasks = tasks_for(guests, config, modes, params, sweep)
    rows_per = [len(t.modes) * len(t.points) for t, _ in tasks]
    total = sum(rows_per)             # progress counts rows: a run priced at k cost points is k
    pool = executors.make(executor, len(tasks))
    order = _Reorder(tasks)
    if pool is None:
        done = 0
        for i, (task, image) in enumerate(tasks):
            def each(label, step=len(task.points)):
                nonlocal done
                if progress:
                    progress(done, total, label)
                done += step
            try:
                rows = guest_rows(task, image, each)
            except interrupt.Interrupted as e:
                order.add(i, e.rows)
                yield from order.flush()
                raise
            yield from order.add(i, rows)
    else:
        yield from _from_pool(pool, tasks, rows_per, total, progress, order)
    if progress:
        progress(total, total, "done")


class _Reorder:
    """Rows of tasks that end in any order, released in matrix order: a guest's
    rows once all its tasks are done (a cost-major sweep interleaves the rows of
    its machine settings) and every guest before it is out."""

    def __init__(self, tasks):
        self.left = {}                     # guest order -> tasks not done
        for task, _ in tasks:
            self.left[task.order] = self.left.get(task.order, 0) + 1
        self.guest_of = [task.order for task, _ in tasks]
        self.rows: dict[int, list] = {}    # guest order -> keyed rows done
        self.next = min(self.left, default=0)

    def add(self, index: int, keyed_rows) -> list[dict]:
        g = self.guest_of[index]
        self.rows.setdefault(g, []).extend(keyed_rows)
        self.left[g] -= 1
        out = []
        while self.next in self.left and self.left[self.next] == 0:
            out += [row for _, row in sorted(self.rows.pop(self.next, []), key=lambda kr: kr[0])]
            self.next += 1
        return out

    def flush(self) -> list[dict]:
        """After a stop: every row done, in matrix order, complete guests or not."""
        keyed = sorted((kr for rows in self.rows.values() for kr in rows), key=lambda kr: kr[0])
        self.rows.clear()
        return [row for _, row in keyed]


def _from_pool(pool, tasks, rows_per, total, progress, order: _Reorder):
    """Rows from `pool` (tasks end in any order), yielded in matrix order."""
    done = 0
    if progress:
        progress(0, total, f"started ({pool.describe()})")
    try:
        with closing(pool.run(guest_rows, tasks)) as results:
            for index, rows in results:
                done += rows_per[index]
                if progress:
                    progress(done, total, f"{tasks[index][0].name} done")
                yield from order.add(index, rows)
    except interrupt.Interrupted as e:
        if getattr(e, "task", None) is not None:   # a worker's stopped task: its runs before
            order.add(e.task, e.rows)
        yield from order.flush()
        raise
    finally:
        close = getattr(pool, "close", None)
        if close:
            close()


class ProgressBar:
    """A plain-text progress bar on stderr (one line, redrawn with \\r on a terminal,
    one line per step otherwise so logs stay readable)."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.t0 = time.perf_counter()
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def __call__(self, done: int, total: int, label: str) -> None:
        filled = int(self.width * done / total) if total else self.width
        bar = "#" * filled + "-" * (self.width - filled)
        text = f"[{bar}] {done}/{total} {time.perf_counter() - self.t0:6.1f}s {label}"
        if self.tty:
            self.stream.write("\r" + text.ljust(100) + ("\n" if label == "done" else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def columns(swept: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The CSV columns: the swept parameters right after the guest."""
    return (COLUMNS[0], *swept, *COLUMNS[1:])


def write_csv(rows: list[dict], path, swept: tuple[str, ...] = ()) -> None:
    cols = columns(swept)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})


def write_json(rows: list[dict], path, meta: dict) -> None:
    Path(path).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


def _fmt_int(v) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def _mcyc(v) -> str:
    return f"{v / 1e6:,.2f}" if isinstance(v, (int, float)) and v != "" else ""


TABLE = (("guest", "guest", str), ("mode", "mode", str), ("retired", "retired", _fmt_int),
         ("exits", "exits", _fmt_int), ("io", "io_exits", _fmt_int),
         ("emul", "faults_emulated", _fmt_int), ("refl", "faults_reflected", _fmt_int),
         ("irq", "interrupts_injected", _fmt_int), ("scan", "scan_exits", _fmt_int),
         ("stub", "stub_exits", _fmt_int), ("exits/M", "exits_per_million", lambda v: f"{v:,.1f}"),
         ("patches", "patches", _fmt_int), ("wall s", "wall_s", lambda v: f"{v:.2f}"),
         ("MIPS", "guest_mips", lambda v: f"{v:.1f}"), ("fidelity", "fidelity", str),
         ("model Mcyc", "model_cycles", _mcyc), ("VT-x Mcyc", "vtx_model_cycles", _mcyc))


def _swept_value(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def format_table(rows: list[dict], markdown: bool = False, swept: tuple[str, ...] = ()) -> str:
    spec = TABLE[:1] + tuple((n, n, _swept_value) for n in swept) + TABLE[1:]
    heads = [h for h, _, _ in spec]
    cells = [[fmt(r.get(key, "")) for _, key, fmt in spec] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(heads)]
    left = {i for i, (_, key, _) in enumerate(spec) if key in ("guest", "mode", "fidelity")}
    def line(vals):
        return "  ".join(v.ljust(w) if i in left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(c) for c in cells])


def plot_available() -> None:
    """Raise BadInput when --plot cannot work (no matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from bt.errors import BadInput
        raise BadInput("--plot needs matplotlib (pip install 'bt[plot]')") from None


def plot(rows: list[dict], outdir, swept: tuple[str, ...] = ()) -> list[Path]:
    """Two PNG charts: exits per million instructions by mode and guest (log scale),
    and modelled cycles by mode (emulate, trap, bt, VT-x model) per guest; with a
    sweep, one group of bars per guest and point ("hello cpu_mhz=50")."""
    plot_available()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    def group(r) -> str:
        return " ".join([r["guest"], *(f"{n}={_swept_value(r[n])}" for n in swept)])
    guests = list(dict.fromkeys(group(r) for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    by = {(group(r), r["mode"]): r for r in rows}
    paths = []

    def bars(series: dict, ylabel: str, title: str, name: str):
        fig, ax = plt.subplots(figsize=(max(6, len(guests) * 1.0), 4.5))
        w = 0.8 / max(len(series), 1)
        for i, (label, vals) in enumerate(series.items()):
            ax.bar([g + i * w for g in range(len(guests))], vals, w, label=label)
        ax.set_xticks([g + 0.4 - w / 2 for g in range(len(guests))])
        ax.set_xticklabels(guests, rotation=30, ha="right")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize="small")
        fig.tight_layout()
        p = out / name
        fig.savefig(p, dpi=100, metadata={"Software": None})
        plt.close(fig)
        paths.append(p)

    bars({m: [by.get((g, m), {}).get("exits_per_million", 0) for g in guests] for m in modes},
         "exits per million instructions", "Exits per million guest instructions",
         "exits_per_million.png")
    cost = {m: [by.get((g, m), {}).get("model_cycles", 0) / 1e6 for g in guests] for m in modes}
    if "trap" in modes:
        cost["VT-x (model)"] = [(by.get((g, "trap"), {}).get("vtx_model_cycles") or 0) / 1e6
                                for g in guests]
    bars(cost, "modelled Mcycles", "Modelled cost by mode", "model_cycles.png")
    return paths
