"""Boot Debian's i386 Linux to the end of a scripted /init and report what it cost.

Usage:
    python benchmarks/linux_boot.py [--mode emulate] [--mem 64] [--repeat N] [--json FILE]
                                    [--linux-unpack]

Fetches (or reuses) the images through `bt.images.fetch.ensure_linux_images`,
builds an initramfs whose /init prints a marker, runs `uname -a`, `cat
/proc/cpuinfo` and `ls /`, and reboots (`reboot -f`, `reboot=k` on the command
line), then reports per run:

    wall time to the /init marker and to the end of the run, retired guest
    instructions (to the marker and in total), virtual seconds, page faults
    (#PF delivered to the guest), system calls (int 0x80), timer and other
    interrupts injected, rdtsc reads answered by the virtual TSC, exits, and
    whether all runs gave byte-identical serial output.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bt.images import load_image  # noqa: E402
from bt.images.fetch import default_linux_cmdline, ensure_linux_images  # noqa: E402
from bt.images.initramfs import build_initramfs  # noqa: E402
from bt.machine import MachineConfig  # noqa: E402
from bt.mode import MODES  # noqa: E402
from runtime.vm import VM  # noqa: E402

MARKER = b"BENCH: init started"
INIT = b"""#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
echo "BENCH: init started"
uname -a
cat /proc/cpuinfo
ls /
reboot -f
"""


class MarkerClock:
    """Serial sink that notes wall time and retired instructions when MARKER appears."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.buf = b""
        self.at: tuple[float, int] | None = None
        self.vm = None

    def write(self, data: bytes) -> None:
        if self.at is None:
            self.buf = (self.buf + data)[-256:]
            if MARKER in self.buf:
                self.at = (time.perf_counter() - self.t0, self.vm.now())

    def flush(self) -> None:
        pass


def one_run(kernel: str, initrd: str, mode: str, mem: int, unpack: bool = False) -> dict:
    cmdline = default_linux_cmdline(mem) + " reboot=k"
    img = load_image(kernel, "linux", mem_bytes=mem << 20, cmdline=cmdline, initrd=initrd,
                     linux_unpack=unpack)
    sink = MarkerClock()
    vm = VM(img, MachineConfig(mem_mib=mem, cmdline=cmdline, mode=mode), stdout=sink)
    sink.vm = vm
    sink.t0 = time.perf_counter()
    r = vm.run()
    exc = r.counters["exceptions_delivered"]
    irq = r.counters["interrupts_injected"]
    return {
        "reason": r.reason, "exit_status": r.exit_status,
        "wall_to_init_s": round(sink.at[0], 2) if sink.at else None,
        "instructions_to_init": sink.at[1] if sink.at else None,
        "wall_total_s": round(r.wall, 2),
        "retired_instructions": r.retired,
        "virtual_seconds": round(r.vtime / vm.config.cpu_hz, 4),
        "mips": round(r.retired / r.wall / 1e6, 2),
        "page_faults": exc.get("0xe", 0),
        "syscalls_int80": exc.get("0x80", 0),
        "timer_interrupts": irq.get("0x30", 0),
        "interrupts_injected": sum(irq.values()),
        "rdtsc_reads": vm.tsc.reads,
        "exits": r.counters["exits"],
        "io_exits": r.counters["io_exits"],
        "slices": r.counters["slices"],
        "serial_sha256": hashlib.sha256(r.serial).hexdigest(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="emulate", choices=[str(m) for m in MODES])
    ap.add_argument("--mem", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--linux-unpack", action="store_true",
                    help="unpack the kernel on the host instead of running its decompressor")
    args = ap.parse_args()
    paths = ensure_linux_images()
    with tempfile.TemporaryDirectory() as tmp:
        initrd = os.path.join(tmp, "bench.cpio")
        with open(initrd, "wb") as f:
            f.write(build_initramfs(paths["busybox"], INIT))
        runs = []
        for i in range(args.repeat):
            res = one_run(str(paths["kernel"]), initrd, args.mode, args.mem, args.linux_unpack)
            runs.append(res)
            print(f"run {i + 1}: " + ", ".join(f"{k}={v}" for k, v in res.items() if k != "serial_sha256"),
                  flush=True)
    same = len({r["serial_sha256"] for r in runs}) == 1 and len({r["retired_instructions"] for r in runs}) == 1
    print(f"identical serial output and counts across {len(runs)} runs: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": args.mode, "mem_mib": args.mem, "runs": runs, "deterministic": same}, f, indent=2)
    return 0 if same and all(r["exit_status"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
