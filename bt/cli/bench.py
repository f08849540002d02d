"""`bt-bench`: run guests under every mode; one table of exits, costs and fidelity.

    bt-bench [IMAGE ...] [--modes emulate,trap,bt] [--out DIR] [--plot DIR]
             [--max-instructions N] [--mem MIB] [--cost NAME=CYCLES,...]
             [--sweep NAME=V1,V2,...] [--jobs N | --scheduler ADDRESS] [--linux-unpack]

IMAGE is anything bt-run accepts (demo:NAME, a file, `linux` for the cached Debian
guest with its default initramfs and command line); none = every demo guest.
Writes DIR/bench.csv and DIR/bench.json (default DIR: bench-out) and prints the
table on stdout; progress goes to stderr.  Each guest at each machine setting is
one task (all its modes) for the local worker processes (--jobs, default: the
cores) or a Dask cluster (--scheduler); the rows are the same wherever they ran.
Exit status: 0 done, 1 a task failed in a worker, 2 bad input, 130/143 stopped
by SIGINT/SIGTERM (the rows done so far are still written and printed).
Columns and the cost model: docs/benchmarks.md, bt/costmodel.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bt import costmodel, interrupt
from bt.cli.common import (EX_IOERR, CliParser, check_writable_dir, fail, positive_int,
                           quiet_on_closed_pipe, stops_on_signals)
from bt.errors import BadInput
from bt.machine import DEFAULT_CPU_MHZ, DEFAULT_MEM_MIB, MachineConfig
from bt.measure import executors
from bt.measure.sweep import Sweep
from bt.mode import MODES, Mode


def make_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="bt-bench", description="Run guests under every mode and compare "
                  "exits, modelled cost and fidelity against pure emulation.")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="images (demo:NAME or a file); default: every demo guest")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated modes (default {','.join(MODES)}; {Mode.EMULATE} is "
                        "the fidelity reference)")
    p.add_argument("--out", default="bench-out", metavar="DIR",
                   help="directory for bench.csv and bench.json (default bench-out)")
    p.add_argument("--plot", metavar="DIR", help="also write PNG charts here (needs matplotlib)")
    p.add_argument("--max-instructions", type=positive_int, default=None, metavar="N",
                   help="instruction budget of every run (status 124 when reached)")
    p.add_argument("--mem", type=int, default=DEFAULT_MEM_MIB, metavar="MIB",
                   help=f"guest RAM in MiB (default {DEFAULT_MEM_MIB})")
    p.add_argument("--cpu-mhz", type=positive_int, default=None, metavar="N",
                   help=f"virtual CPU clock (default {DEFAULT_CPU_MHZ})")
    p.add_argument("--cost", metavar="NAME=CYCLES,...",
                   help="override cost-model parameters: " + ", ".join(
                       f"{n}={v:g}" for n, v in costmodel.describe_params()))
    p.add_argument("--sweep", action="append", metavar="NAME=V1,V2,...",
                   help="a matrix dimension over cpu_mhz or a cost-model parameter, one "
                        "column in the table (repeat for more; the product is run)")
    p.add_argument("--jobs", "-j", type=positive_int, default=None, metavar="N",
                   help="local worker processes (default: the number of cores; 1 = "
                        "in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on this Dask distributed scheduler (tcp://HOST:PORT; needs "
                        "pip install -e '.[dask]'; docs/benchmarks.md)")
    p.add_argument("--linux-unpack", action="store_true",
                   help="Linux kernels: unpack the bzImage on the host instead of running its "
                        "own decompressor in the guest (as bt-run --linux-unpack)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _parse_modes(text: str) -> tuple[Mode, ...]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise BadInput(f"--modes: no mode in '{text}' (choose from {', '.join(MODES)})")
    try:
        modes = [Mode.parse(m) for m in names]
    except BadInput as e:
        raise BadInput(f"--modes: {e}") from None
    if len(set(modes)) != len(modes):
        raise BadInput(f"--modes: '{text}' names a mode twice")
    return tuple(m for m in MODES if m in modes)   # reference first


def _load_guests(names: list[str], mem_mib: int, cpu_mhz: int = DEFAULT_CPU_MHZ,
                 linux_unpack: bool = False) -> list[tuple[str, object]]:
    from bt.demos import list_demos
    from bt.images import load_image
    from bt.images.linux_guest import is_linux_name, load_cached_linux
    if not 1 <= mem_mib <= 3072:
        raise BadInput(f"--mem {mem_mib} must be between 1 and 3072 MiB")
    names = names or [f"demo:{d}" for d in list_demos()]
    guests = []
    for n in names:
        if is_linux_name(n):      # the cached Debian guest, booted as `bt-run linux` boots it
            guests.append((n, load_cached_linux(mem_mib, cpu_mhz, linux_unpack=linux_unpack)))
        else:
            guests.append((n[5:] if n.startswith("demo:") else Path(n).name,
                           load_image(n, mem_bytes=mem_mib << 20, linux_unpack=linux_unpack)))
    return guests


@stops_on_signals("bt-bench")
@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_intermixed_args(argv)
    from bt.measure import bench
    try:
        modes = _parse_modes(args.modes)
        params = costmodel.CostParams().with_overrides(args.cost)
        sweep = Sweep.parse(args.sweep)
        sweep.check_overrides(args.cost, args.cpu_mhz is not None)
        if args.scheduler and args.jobs is not None:
            raise BadInput("--jobs and --scheduler exclude each other (the cluster's "
                           "workers are its jobs)")
        cpu_mhz = args.cpu_mhz or DEFAULT_CPU_MHZ
        guests = _load_guests(args.images, args.mem, cpu_mhz, args.linux_unpack)
        config = MachineConfig(mem_mib=args.mem, cpu_mhz=cpu_mhz,
                               max_instructions=args.max_instructions)
        out = Path(args.out)
        check_writable_dir(out, "--out")
        if args.plot:                    # found out now, not after every run
            bench.plot_available()
            check_writable_dir(Path(args.plot), "--plot")
        ntasks = len(guests) * len(sweep.machine_points())
        executor = executors.make(args.scheduler or args.jobs or executors.default_jobs(),
                                  ntasks)
    except BadInput as e:
        return fail("bt-bench", str(e))
    progress = None if args.quiet else bench.ProgressBar()
    rows: list[dict] = []
    stopped = None
    try:
        for row in bench.iter_matrix(guests, config, modes, params, progress, executor, sweep):
            rows.append(row)
    except interrupt.Interrupted as e:   # keep what is done: written and printed below
        stopped = e
    except executors.WorkerError as e:
        return fail("bt-bench", f"a task failed: {str(e).splitlines()[0]}", 1)
    meta = {"command": "bt-bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "modes": list(modes), "mem_mib": args.mem, "cpu_mhz": cpu_mhz,
            "sweep": {n: list(v) for n, v in sweep.dims},
            "executor": executor.describe() if executor else "this process",
            "max_instructions": args.max_instructions,
            "cost_params": dict(costmodel.describe_params(params)),
            "nondeterministic_columns": list(bench.NONDETERMINISTIC),
            "interrupted": interrupt.signal_name(stopped.signum) if stopped else None}
    try:
        bench.write_csv(rows, out / "bench.csv", sweep.names)
        bench.write_json(rows, out / "bench.json", meta)
        charts = bench.plot(rows, args.plot, sweep.names) if args.plot and rows else []
    except OSError as e:
        return fail("bt-bench", f"cannot write {e.filename}: {e.strerror}", EX_IOERR)
    print(bench.format_table(rows, markdown=args.markdown, swept=sweep.names))
    print(f"bt-bench: wrote {out / 'bench.csv'}, {out / 'bench.json'}"
          + "".join(f", {c}" for c in charts), file=sys.stderr)
    if stopped:
        total = len(guests) * len(sweep.points()) * len(modes)
        print(f"bt-bench: {stopped}: {len(rows)} of {total} rows done",
              file=sys.stderr)
        return stopped.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
