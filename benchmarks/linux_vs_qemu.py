"""Debian's i386 Linux to its /init marker: QEMU TCG against `bt-run linux` in each mode.

Usage:
    python benchmarks/linux_vs_qemu.py [--modes emulate,bt] [--rounds 3] [--mem 64]
                                       [--timeout 900] [--json FILE] [--linux-unpack]
                                       [--before DIR]

Both boot the same kernel (the cached Debian bzImage, `bt-images fetch linux`),
the same command line (`default_linux_cmdline` + `reboot=k`) and the same
busybox initramfs, whose /init prints a marker, runs a few commands and
reboots (benchmarks/linux_boot.py's INIT).  Both start the bzImage through the
boot protocol, so both run its xz decompressor; `--linux-unpack` makes bt-run
unpack the kernel on the host instead (QEMU cannot), as bt did before issue 19.  QEMU is Debian's
`qemu-system-i386 -kernel ... -accel tcg` (SeaBIOS, a full PC) with
`-no-reboot`, so the guest's reboot ends it.  Runs are interleaved (QEMU, then
each mode, round after round) so that load from other jobs on the machine
falls on all of them alike, and each is a separate process measured the same
way: wall time from the start of the process to the marker on its serial
output, and the CPU time the process had used by then (/proc/PID/stat: user +
system, every thread).  Printed: per runner the median of each and the ratio
to QEMU's median, and the same for the kernel's banner ("Linux version", its
first message): with the boot protocol, the CPU up to it is the bootloader's
or loader's part plus the xz decompressor's, the rest is the kernel's.
`--before DIR` adds a runner `MODE@before` per mode: the same command with an
older source tree (built C extensions included) first on PYTHONPATH, so that
a change is measured against its parent in the same interleaved run.

QEMU runs the guest against the host's real clock: a guest waiting for a timer
waits in real time there, while bt skips idle virtual time; the CPU column is
the fairer figure on a loaded machine, wall time is what a user sees.

Without `qemu-system-i386` on PATH the script says how to install it and
exits with status 0 (nothing measured).
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bt.images.fetch import default_linux_cmdline, ensure_linux_images  # noqa: E402
from bt.images.initramfs import build_initramfs  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from linux_boot import INIT, MARKER  # noqa: E402

QEMU = "qemu-system-i386"
INSTALL_HINT = (f"{QEMU} is not installed: on Debian or Ubuntu run "
                "`apt-get install qemu-system-x86` (as root), then run this script again.")
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK      # utime, stime


BANNER = b"Linux version"


def timed_run(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run `cmd`; note wall and CPU time when BANNER and MARKER appear on its stdout."""
    t0 = time.perf_counter()
    # `python -m` puts the working directory first on sys.path: run an older
    # tree from inside it, or this checkout would be imported instead
    cwd = env.get("PYTHONPATH") if env else None
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    tail, at, banner = b"", None, None
    out_bytes = 0
    try:
        while True:
            left = timeout - (time.perf_counter() - t0)
            if left <= 0:
                p.kill()
                break
            if not sel.select(min(left, 1.0)):
                if p.poll() is not None:
                    break
                continue
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            out_bytes += len(chunk)
            if at is None:
                tail = (tail + chunk)[-4096:]
                if banner is None and BANNER in tail:
                    banner = (time.perf_counter() - t0, cpu_seconds(p.pid))
                if MARKER in tail:
                    at = (time.perf_counter() - t0, cpu_seconds(p.pid))
        status = p.wait()
    finally:
        sel.close()
        p.stdout.close()
    return {"wall_to_marker": round(at[0], 2) if at else None,
            "cpu_to_marker": round(at[1], 2) if at else None,
            "cpu_to_banner": round(banner[1], 2) if banner else None,
            "wall_total": round(time.perf_counter() - t0, 2), "status": status,
            "serial_bytes": out_bytes}


def qemu_cmd(kernel: str, initrd: str, cmdline: str, mem: int) -> list[str]:
    return [QEMU, "-kernel", kernel, "-initrd", initrd, "-append", cmdline, "-m", str(mem),
            "-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio", "-accel", "tcg"]


def bt_cmd(mode: str, kernel: str, initrd: str, cmdline: str, mem: int, unpack: bool) -> list[str]:
    return [sys.executable, "-m", "bt.cli.run", kernel, "--format", "linux", "--initrd", initrd,
            "--cmdline", cmdline, "--mem", str(mem), "--mode", mode, "-q"] + (["--linux-unpack"] if unpack else [])


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for name, rs in runs.items():
        walls = [r["wall_to_marker"] for r in rs if r["wall_to_marker"] is not None]
        cpus = [r["cpu_to_marker"] for r in rs if r["cpu_to_marker"] is not None]
        banners = [r["cpu_to_banner"] for r in rs if r.get("cpu_to_banner") is not None]
        kernels = [r["cpu_to_marker"] - r["cpu_to_banner"] for r in rs
                   if r["cpu_to_marker"] is not None and r.get("cpu_to_banner") is not None]
        out[name] = {"runs": len(rs), "reached": len(walls),
                     # an even number of rounds averages two: round for the table
                     "wall_median": round(statistics.median(walls), 2) if walls else None,
                     "cpu_median": round(statistics.median(cpus), 2) if cpus else None,
                     "banner_median": round(statistics.median(banners), 2) if banners else None,
                     "kernel_median": round(statistics.median(kernels), 2) if kernels else None}
    q = out.get("qemu", {})
    for s in out.values():
        for k in ("wall", "cpu", "banner", "kernel"):
            base, v = q.get(f"{k}_median"), s[f"{k}_median"]
            s[f"{k}_ratio"] = round(v / base, 2) if base and v is not None else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="emulate,bt", help="bt-run modes, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mem", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--linux-unpack", action="store_true", help="bt-run unpacks the kernel on the host")
    ap.add_argument("--before", metavar="DIR", help="also run each mode from this older source tree")
    args = ap.parse_args()
    if shutil.which(QEMU) is None:
        print(INSTALL_HINT)
        return 0
    modes = [m for m in args.modes.split(",") if m]
    paths = ensure_linux_images()
    kernel = str(paths["kernel"])
    cmdline = default_linux_cmdline(args.mem) + " reboot=k"
    runs: dict[str, list[dict]] = {"qemu": [], **{m: [] for m in modes}}
    with tempfile.TemporaryDirectory() as tmp:
        initrd = os.path.join(tmp, "bench.cpio")
        Path(initrd).write_bytes(build_initramfs(paths["busybox"], INIT))
        cmds = {"qemu": qemu_cmd(kernel, initrd, cmdline, args.mem),
                **{m: bt_cmd(m, kernel, initrd, cmdline, args.mem, args.linux_unpack) for m in modes}}
        envs: dict[str, dict | None] = {name: None for name in cmds}
        if args.before:
            for m in modes:
                runs[f"{m}@before"] = []
                cmds[f"{m}@before"] = bt_cmd(m, kernel, initrd, cmdline, args.mem, args.linux_unpack)
                envs[f"{m}@before"] = dict(os.environ, PYTHONPATH=os.path.abspath(args.before))
        for rnd in range(args.rounds):
            for name, cmd in cmds.items():
                r = timed_run(cmd, args.timeout, envs[name])
                runs[name].append(r)
                print(f"round {rnd + 1} {name}: " + ", ".join(f"{k}={v}" for k, v in r.items()),
                      flush=True)
    summary = summarize(runs)
    print(f"\n{'runner':<15} {'reached':>7} {'wall s':>8} {'x qemu':>7} {'cpu s':>8} {'x qemu':>7}"
          f" {'to banner':>9} {'x qemu':>7} {'kernel':>7} {'x qemu':>7}")
    for name, s in summary.items():
        print(f"{name:<15} {s['reached']:>3}/{s['runs']:<3} {s['wall_median'] or '-':>8} "
              f"{s['wall_ratio'] or '-':>7} {s['cpu_median'] or '-':>8} {s['cpu_ratio'] or '-':>7}"
              f" {s['banner_median'] or '-':>9} {s['banner_ratio'] or '-':>7}"
              f" {s['kernel_median'] or '-':>7} {s['kernel_ratio'] or '-':>7}")
    print(f"qemu: {subprocess.run([QEMU, '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cmdline": cmdline, "mem_mib": args.mem, "linux_unpack": args.linux_unpack,
                       "runs": runs, "summary": summary}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
