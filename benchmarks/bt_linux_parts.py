"""Where bt's time goes on Linux: process CPU inside a few VMM functions.

Usage:
    python benchmarks/bt_linux_parts.py [--instructions 150000000] [--report FILE.json] [--walk-bound N]

Runs `bt-run linux --linux-unpack --mode bt` for the budget in this process with
light wrappers around the functions named in PARTS (the outermost call of each
is timed with time.process_time, so other processes on a shared machine do not
inflate the figures the way they inflate wall time, and a recursive call is not
counted twice), then prints one JSON line: the whole run's CPU seconds, the
report's `vmm_time_seconds`, and [seconds, calls] per part.  The parts overlap
(a scan exit contains the scanner's walk); docs/benchmarks.md, "Linux under bt:
where the time goes", reads them.  The wrappers change no result: the report
they leave is the plain run's, timing fields apart.
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from collections import defaultdict

import patcher.patches
import runtime.bt
import runtime.csam
import runtime.smc
import runtime.views
import scanner.cfg
import scanner.pages
import scanner.scan

PARTS = [
    (scanner.cfg.CFG, "branch_targets_in"),
    (scanner.cfg.CFG, "remove_nodes"),
    (scanner.pages.PageMap, "code_pages"),
    (scanner.scan.Scanner, "_run_worklist"),
    (scanner.scan.Scanner, "invalidate_page"),
    (scanner.scan.Scanner, "invalidate_nodes"),
    (runtime.csam.CSAM, "_on_unscanned"),
    (runtime.csam.CSAM, "drain_writes"),
    (runtime.csam.CSAM, "_scan_read"),
    (runtime.smc.SmcRewrites, "_invalidate_written"),
    (runtime.views.Views, "_drop_view"),
    (runtime.views.Views, "_forget"),
    (patcher.patches.Patcher, "install_jump"),
    (runtime.bt.BTMode, "_place_patches"),
    (runtime.bt.BTMode, "on_fault"),
    (runtime.bt.BTMode, "_emulate_original"),
]


def instrument() -> tuple[dict, dict]:
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    depth: dict[str, int] = defaultdict(int)
    for cls, name in PARTS:
        label = f"{cls.__name__}.{name}"
        f = getattr(cls, name)

        def timed(*a, _f=f, _label=label, **k):
            if depth[_label]:
                return _f(*a, **k)
            depth[_label] += 1
            t = time.process_time()
            try:
                return _f(*a, **k)
            finally:
                seconds[_label] += time.process_time() - t
                calls[_label] += 1
                depth[_label] -= 1
        setattr(cls, name, functools.wraps(f)(timed))
    return seconds, calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instructions", type=int, default=150_000_000)
    p.add_argument("--report", default="/tmp/bt_linux_parts.json")
    p.add_argument("--walk-bound", type=int, default=None,
                   help="instructions one lazy walk decodes before deferring (runtime/csam.py WALK_BOUND; "
                        "0: unbounded)")
    args = p.parse_args()
    if args.walk_bound is not None:
        runtime.csam.WALK_BOUND = args.walk_bound or None
    seconds, calls = instrument()
    from bt.cli.run import main as bt_run
    t = time.process_time()
    try:
        bt_run(["linux", "--linux-unpack", "--mode", "bt", "--max-instructions",
                str(args.instructions), "-q", "--report", args.report])
    except SystemExit:
        pass
    total = time.process_time() - t
    with open(args.report) as f:
        report = json.load(f)
    print(json.dumps({"total": round(total, 2), "vmm_time": report["vmm_time_seconds"],
                      "walk_bound": runtime.csam.WALK_BOUND,
                      "parts": {k: [round(v, 3), calls[k]] for k, v in sorted(seconds.items())}}))


if __name__ == "__main__":
    main()
