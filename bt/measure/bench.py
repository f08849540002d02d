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
from pathlib import Path

from bt import costmodel, interrupt
from bt.measure.fidelity import compare
from bt.measure.observe import run
from bt.mode import MODES, Mode
from bt.outcome import Outcome

NONDETERMINISTIC = ("wall_s", "guest_mips")
EXIT_KINDS = ("io_exits", "cpuid_exits", "faults_emulated", "faults_reflected",
              "interrupts_injected", "exceptions_delivered", "scan_exits", "stub_exits",
              "gdt_write_exits", "halts")
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


def run_matrix(guests: list[tuple[str, object]], config, modes=MODES,
               params: costmodel.CostParams = costmodel.CostParams(), progress=None) -> list[dict]:
    """guests: (name, GuestImage) pairs.  `progress(done, total, label)` is called
    before each run and once at the end."""
    return list(iter_matrix(guests, config, modes, params, progress))


def iter_matrix(guests: list[tuple[str, object]], config, modes=MODES,
                params: costmodel.CostParams = costmodel.CostParams(), progress=None):
    """The rows of `run_matrix`, one as each run ends.  A run that Ctrl-C or
    SIGTERM stopped yields no row (its figures are partial): it raises
    `bt.interrupt.Interrupted`, so the caller keeps the rows it already has."""
    modes = [Mode.parse(m) for m in modes]
    total = len(guests) * len(modes)
    done = 0
    for name, image in guests:
        ref = None
        for mode in modes:
            if progress:
                progress(done, total, f"{name} {mode}")
            obs = run(image, config, mode, config.max_instructions, keep_ram=True)
            if obs.reason == Outcome.INTERRUPTED:
                raise interrupt.Interrupted(obs.exit_status - 128)
            row = row_for(name, obs, params)
            if mode.is_reference:
                ref = obs
            elif ref is not None:
                row["fidelity"] = compare(image, config, mode, locate=False,
                                          reference=ref, other=obs).verdict
            else:
                row["fidelity"] = "not compared"
            obs.ram = None
            done += 1
            yield row
        if ref is not None:
            ref.ram = None
    if progress:
        progress(done, total, "done")


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


def write_csv(rows: list[dict], path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})


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


def format_table(rows: list[dict], markdown: bool = False) -> str:
    heads = [h for h, _, _ in TABLE]
    cells = [[fmt(r.get(key, "")) for _, key, fmt in TABLE] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(heads)]
    left = {0, 1, 14}
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


def plot(rows: list[dict], outdir) -> list[Path]:
    """Two PNG charts: exits per million instructions by mode and guest (log scale),
    and modelled cycles by mode (emulate, trap, bt, VT-x model) per guest."""
    plot_available()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    guests = list(dict.fromkeys(r["guest"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    by = {(r["guest"], r["mode"]): r for r in rows}
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
