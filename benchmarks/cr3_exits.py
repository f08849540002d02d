"""Linux's `mov cr3` exits: how many reach Python, and the run's CPU time.

Usage:
    python benchmarks/cr3_exits.py [--mode bt] [--instructions 150000000] [--report FILE.json]

Runs `bt-run linux --linux-unpack --mode MODE` for the budget in this process,
counting the guest CR3 loads the Python path answers (runtime/trap.py
`write_cr(3)`; the native interrupt hook, runtime/_exits.c, answers the rest
without calling it), and prints one JSON line: CPU seconds of the whole run
(time.process_time: other processes on a shared machine do not inflate it),
the Python CR3 loads, the report's `faults_emulated["mov"]` (every `mov` to or
from a control register, native or not) and the natively handled exits
(`invlpg` and `mov cr3` together).  Works on any tree that has
`TrapMode.write_cr`, so the tree before a change can be measured with this
script by putting it first on PYTHONPATH (docs/benchmarks.md, "Native mov cr3
with the slot view on").
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import runtime.exits
import runtime.trap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="bt", choices=["trap", "bt"])
    p.add_argument("--instructions", type=int, default=150_000_000)
    p.add_argument("--report", default="/tmp/cr3_exits.json")
    args = p.parse_args()
    python_cr3 = [0]
    write_cr = runtime.trap.TrapMode.write_cr

    def counted(self, n, value):
        python_cr3[0] += n == 3
        return write_cr(self, n, value)
    runtime.trap.TrapMode.write_cr = counted
    hooks = []
    init = runtime.exits.NativeExits.__init__

    def kept(self, *a, **k):
        init(self, *a, **k)
        hooks.append(self)
    runtime.exits.NativeExits.__init__ = kept
    from bt.cli.run import main as bt_run
    t = time.process_time()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):      # the guest's serial output
        bt_run(["linux", "--linux-unpack", "--mode", args.mode, "--max-instructions", str(args.instructions),
                "-q", "--report", args.report])
    total = time.process_time() - t
    with open(args.report) as f:
        report = json.load(f)
    counters = report["counters"]
    print(json.dumps({"mode": args.mode, "cpu_s": round(total, 2), "retired": report["retired_instructions"],
                      "python_mov_cr3": python_cr3[0],
                      "faults_emulated_mov": counters.get("faults_emulated", {}).get("mov", 0),
                      "native_handled": sum(h.x.handled for h in hooks)}))


if __name__ == "__main__":
    main()
