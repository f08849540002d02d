"""What an exit costs under paging: Debian's kernel for a fixed instruction budget.

Usage:
    python benchmarks/exit_cost_linux.py [--instructions 20000000] [--modes emulate,trap,bt]
                                         [--python-exits] [--profile FILE] [--json FILE]

Runs `linux` (bt.images.fetch's Debian kernel and busybox initramfs) for the
budget under each mode, one after another in this process, and reports per run:
the process CPU seconds of the run (time.process_time: other processes on the
machine do not inflate it, unlike wall time), retired instructions, exits
(device I/O apart), exits answered by the native interrupt hook
(runtime/_exits.c: invlpg at CPL 1), the VMM's own time inside its hooks
(`vmm_time`, wall clock) and that time per exit.  `--python-exits` switches the
native answer off, so every exit takes the Python path (the comparison the
section "Exit cost under paging (issue 17)" of docs/benchmarks.md reports).
`--profile FILE` writes a cProfile of the runs (pstats format).

The counters of a run do not depend on which path answered its exits
(tests/runtime/test_native_exits.py); the script checks that every mode
retired the whole budget.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bt.api import load, make_vm  # noqa: E402
from bt.machine import DEFAULT_CPU_MHZ, DEFAULT_MEM_MIB  # noqa: E402


def linux_image():
    """What `bt-run linux` runs (bt/cli/common.py): the cached kernel and
    initramfs with the default command line."""
    from bt.images.fetch import cached_linux_images, default_linux_cmdline
    paths = cached_linux_images()
    return load(str(paths["kernel"]), format="linux", initrd=str(paths["initrd"]),
                cmdline=default_linux_cmdline(DEFAULT_MEM_MIB, DEFAULT_CPU_MHZ))


def measure(image, mode: str, n: int, python_exits: bool, profiler) -> dict:
    vm = make_vm(image, mode, max_instructions=n)
    native_exits = getattr(vm, "_native_exits", None)     # None: a tree before runtime/_exits.c
    if python_exits and native_exits is not None:
        native_exits.x.invlpg = False
    t0 = time.process_time()
    if profiler is not None:
        res = profiler.runcall(vm.run)
    else:
        res = vm.run()
    cpu = time.process_time() - t0
    c = res.counters
    native = native_exits.x.handled if native_exits is not None else 0
    exits = c["exits"]
    return {"mode": mode, "python_exits": python_exits, "cpu_s": round(cpu, 2), "retired": res.retired,
            "exits": exits, "io_exits": c["io_exits"], "native_exits": native,
            "vmm_s": round(res.vmm_time, 2),
            "us_per_exit": round(res.vmm_time / exits * 1e6, 1) if exits else 0.0,
            "us_per_python_exit": round(res.vmm_time / (exits - native) * 1e6, 1) if exits > native else 0.0,
            "reason": str(res.reason)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instructions", type=int, default=20_000_000)
    p.add_argument("--modes", default="emulate,trap,bt")
    p.add_argument("--python-exits", action="store_true", help="native invlpg off: every exit in Python")
    p.add_argument("--profile", metavar="FILE")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    prof = cProfile.Profile() if args.profile else None
    image = linux_image()
    rows = [measure(image, m, args.instructions, args.python_exits, prof) for m in args.modes.split(",")]
    if prof is not None:
        prof.dump_stats(args.profile)
    keys = list(rows[0])
    print("  ".join(f"{k:>18}" for k in keys))
    for r in rows:
        print("  ".join(f"{str(r[k]):>18}" for k in keys))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = [r["mode"] for r in rows if r["retired"] != args.instructions]
    if bad:
        print(f"did not retire the whole budget: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
