#!/usr/bin/env python3
"""Long runs with the process's memory sampled (issue 18, "Time and memory").

Each guest below runs for `--seconds` of wall time per mode, in budgets of
`--step` instructions; after each budget the resident set size (RSS) is read
from /proc/self/statm.  Growth is measured from the first sample after a
warm-up (the first fifth of the time: translation caches, lazy scans and patch
plans fill then) to the end, and reported per guest and mode with the
instructions run, the speed and, under bt, the patches installed and removed.

Guests (assembled here, raw at 0x100000, nothing else on their pages):

* `cli-sti`: an endless `cli; sti; pushfd; popfd` loop (an exit or a stub per
  instruction under trap and bt);
* `rewrite-imm`: a loop that increments the immediate of its own `mov` every
  round, with sensitive instructions on the same page (code that keeps
  rewriting itself: patch churn under bt);
* `slide`: zeroed RAM from the entry on, `add [eax], al` at every address
  (new translated code at every instruction until RAM's end).

Every guest and mode runs in a process of its own (a finished VM's memory is
not all given back to the system, so runs in one process would see each other's).
Exit status 1 when some run's growth exceeds `--max-growth` MB.

    python benchmarks/soak.py --seconds 60 --modes emulate,trap,bt
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bt import api                      # noqa: E402
from bt.outcome import Outcome          # noqa: E402

GUESTS = {
    "cli-sti": "mov esp, 0x90000\nl: cli\nsti\npushfd\npopfd\njmp l",
    "rewrite-imm": ("mov esp, 0x90000\n"
                    "l: mov eax, 0x12345678\n"
                    "inc dword ptr [l + 1]\n"
                    "pushfd\npopfd\ncli\nsti\n"
                    "jmp l"),
    "slide": b"\x00\x00",
}
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def soak(guest: str, mode: str, seconds: float, step: int) -> dict:
    vm = api.make_vm(api.code_image(GUESTS[guest], name=guest), mode)
    samples: list[tuple[float, int, float]] = []
    t0 = time.perf_counter()
    outcome = Outcome.BUDGET
    while True:
        vm.config.max_instructions = vm.retired + step
        res = vm.run()
        now = time.perf_counter() - t0
        samples.append((now, vm.retired, rss_mb()))
        outcome = res.reason
        if outcome is not Outcome.BUDGET or now >= seconds:
            break
        vm.stop = None
    warm = next((s for s in samples if s[0] >= seconds / 5), samples[0])
    end = samples[-1]
    row = {"guest": guest, "mode": mode, "outcome": str(outcome), "instructions": end[1],
           "seconds": round(end[0], 1), "mips": round(end[1] / end[0] / 1e6, 2) if end[0] else 0.0,
           "rss_warm_mb": round(warm[2], 1), "rss_end_mb": round(end[2], 1),
           "growth_mb": round(end[2] - warm[2], 1),
           "rss_peak_mb": round(max(s[2] for s in samples), 1)}
    if mode == "bt":
        p = vm.mode.patcher.stats()
        row["patches_installed"] = sum(p["installed"].values())
        row["patches_removed"] = p["removed"]
        row["stub_cache_bytes"] = p["stub_cache_bytes"]
        row["stub_reuses"] = p.get("stub_reuses", 0)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--seconds", type=float, default=60.0, help="wall time per guest and mode")
    ap.add_argument("--step", type=int, default=2_000_000, help="instructions between samples")
    ap.add_argument("--guests", default=",".join(GUESTS))
    ap.add_argument("--modes", default="emulate,trap,bt")
    ap.add_argument("--max-growth", type=float, default=16.0, metavar="MB")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--one", metavar="GUEST:MODE", help=argparse.SUPPRESS)   # the child process
    a = ap.parse_args(argv)
    if a.one:
        guest, mode = a.one.split(":")
        print(json.dumps(soak(guest, mode, a.seconds, a.step)))
        return 0
    guests = a.guests.split(",")
    modes = a.modes.split(",")
    bad = [g for g in guests if g not in GUESTS] + [m for m in modes if m not in ("emulate", "trap", "bt")]
    if bad or a.seconds <= 0 or a.step <= 0:
        ap.error(f"unknown guest or mode, or a non-positive number: {', '.join(bad) or 'seconds/step'}")
    rows = []
    for g in guests:
        for m in modes:
            p = subprocess.run([sys.executable, __file__, "--one", f"{g}:{m}", "--seconds", str(a.seconds),
                                "--step", str(a.step)], capture_output=True, text=True)
            if p.returncode:
                print(f"error: the {g} run under {m} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}",
                      file=sys.stderr)
                return 1
            r = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append(r)
            extra = (f"  patches +{r['patches_installed']} -{r['patches_removed']} (stubs reused "
                     f"{r['stub_reuses']}), stub cache {r['stub_cache_bytes'] / 1024:.1f} KiB" if m == "bt" else "")
            print(f"{g:12} {m:8} {r['instructions']:>12,} instr  {r['mips']:6.2f} MIPS  "
                  f"RSS {r['rss_warm_mb']:6.1f} -> {r['rss_end_mb']:6.1f} MB "
                  f"(growth {r['growth_mb']:+.1f}, peak {r['rss_peak_mb']:.1f}){extra}  [{r['outcome']}]",
                  flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    worst = max(rows, key=lambda r: r["growth_mb"])
    print(f"largest growth after warm-up: {worst['growth_mb']:+.1f} MB ({worst['guest']}, {worst['mode']})")
    return 1 if worst["growth_mb"] > a.max_growth else 0


if __name__ == "__main__":
    sys.exit(main())
