#!/usr/bin/env python3
"""Many short runs, looking for native crashes (issue 18).

A native crash (SIGSEGV, glibc's "double free or corruption") showed up about
once in 400-600 short `bt-run` processes; docs/reliability.md has
the one stack caught.  This script is the stress loop that hunts for it:

* `--processes N`: N `bt-run DEMO --mode M -q` processes (demos and modes in
  rotation), `--jobs J` at a time, each with Python's fault handler on; a
  process that dies by a signal or prints "Fatal Python error" is a crash.
* `--in-process N`: N runs in this process, each a fresh VM (fresh Unicorn
  engine); engines are left to the garbage collector as a long notebook or
  sweep would leave them.

Prints one line per crash and a summary; exit status 1 when anything crashed,
0 otherwise.  Example (the figures in docs/benchmarks.md):

    python benchmarks/stress_runs.py --processes 400 --in-process 400 --jobs 2
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

DEMOS = ("probe-flags", "hello", "exceptions", "probe-segments", "probe-tables", "fnptr", "syscall", "smc")
MODES = ("emulate", "trap", "bt")
WALL_LIMIT = 120.0            # seconds for one process; a hang is reported too


def plan(n: int) -> list[tuple[str, str]]:
    """The first n (demo, mode) pairs of the rotation."""
    return list(itertools.islice(itertools.cycle(itertools.product(DEMOS, MODES)), n))


def one_process(demo: str, mode: str) -> str | None:
    """None when the run ended normally (any guest status), else what went wrong."""
    cmd = [sys.executable, "-X", "faulthandler", "-c",
           "import sys; from bt.cli.run import main; sys.exit(main())",
           f"demo:{demo}", "--mode", mode, "-q"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=WALL_LIMIT,
                           env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    except subprocess.TimeoutExpired:
        return f"demo:{demo} --mode {mode}: no end after {WALL_LIMIT:.0f} s"
    if p.returncode < 0 or "Fatal Python error" in p.stderr:
        first = next((ln for ln in p.stderr.splitlines() if "Fatal Python error" in ln),
                     f"killed by signal {-p.returncode}")
        return f"demo:{demo} --mode {mode}: {first.strip()}"
    if "Traceback" in p.stderr:
        return f"demo:{demo} --mode {mode}: Python traceback: {p.stderr.strip().splitlines()[-1]}"
    return None


def in_process(n: int) -> list[str]:
    from bt import api
    from bt.outcome import Outcome
    problems = []
    for demo, mode in plan(n):
        res = api.run(f"demo:{demo}", mode)
        if res.reason is Outcome.VMM_ERROR:
            problems.append(f"demo:{demo} --mode {mode} in-process: {res.reason}: {res.message}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--processes", type=int, default=200, metavar="N")
    ap.add_argument("--in-process", type=int, default=200, metavar="N")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="J")
    a = ap.parse_args(argv)
    if a.processes < 0 or a.in_process < 0 or a.jobs < 1:
        ap.error("counts must be >= 0 and --jobs >= 1")
    t0 = time.monotonic()
    problems: list[str] = []
    with ThreadPoolExecutor(a.jobs) as pool:
        for res in pool.map(lambda dm: one_process(*dm), plan(a.processes)):
            if res:
                problems.append(res)
                print(res, flush=True)
    more = in_process(a.in_process)
    for res in more:
        print(res, flush=True)
    problems += more
    print(f"processes: {a.processes}  in-process runs: {a.in_process}  "
          f"problems: {len(problems)}  time: {time.monotonic() - t0:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
