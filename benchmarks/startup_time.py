"""Start-up cost of bt-run (issue 19): CPU time (user + sys of the child) of one
command under several set-ups, run alternately, median of --rounds.

  python benchmarks/startup_time.py --rounds 7
  python benchmarks/startup_time.py --rounds 5 --before /tmp/old-tree -- linux --linux-unpack \\
      --mode emulate --max-instructions 20000000

Set-ups: `cached` (the calibration cache warm), `uncached` (BT_CALIBRATION_CACHE=off:
every process calibrates) and, with --before DIR, `before`: a source tree of an
older commit (git archive; the built C extensions copied in) put first on
PYTHONPATH.  Bytecode is written and reused (PYTHONDONTWRITEBYTECODE unset), as
for an installed tool.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile


def cpu_seconds(argv: list[str], env: dict) -> float:
    # `python -m` puts the working directory first on sys.path: the tree's own root.
    cwd = env.get("PYTHONPATH") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    STATUSES.add(os.waitstatus_to_exitcode(status))     # the guest's own (124: the instruction cap)
    return usage.ru_utime + usage.ru_stime


STATUSES: set[int] = set()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--before", metavar="DIR", help="an older source tree to compare with")
    p.add_argument("args", nargs="*", help="bt-run's arguments (default: demo:hello --mode emulate)")
    a = p.parse_args(argv)
    run_args = a.args or ["demo:hello", "--mode", "emulate"]
    cmd = [sys.executable, "-m", "bt.cli.run", *run_args, "-q"]
    from bt.images.fetch import image_root
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    base["BT_IMAGE_DIR"] = str(image_root())      # images stay where they are; the cache is fresh
    cache = tempfile.mkdtemp(prefix="bt-startup-")
    setups = {"cached": dict(base, XDG_CACHE_HOME=cache),
              "uncached": dict(base, BT_CALIBRATION_CACHE="off")}
    if a.before:
        setups["before"] = dict(base, PYTHONPATH=a.before)
    for env in setups.values():                 # bytecode written, the cache filled
        cpu_seconds(cmd, env)
    times = {name: [] for name in setups}
    for _ in range(a.rounds):
        for name, env in setups.items():
            times[name].append(cpu_seconds(cmd, env))
    print(f"bt-run {' '.join(run_args)}: median CPU seconds of {a.rounds} alternated runs "
          f"(exit statuses {sorted(STATUSES)})")
    for name, ts in times.items():
        print(f"  {name:9s} {statistics.median(ts):.3f}  (min {min(ts):.3f}, max {max(ts):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
