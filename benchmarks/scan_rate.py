"""Scan rate (instructions/s) of the scanner on Debian's i386 kernel.

Usage:
    python benchmarks/scan_rate.py [--vmlinuz PATH | --deb PATH] [--repeat N] [--engines c,python]

Without a path it downloads `linux-image-6.1.0-*-686-unsigned` (i386) with
apt-get into a temporary directory (needs the i386 architecture added and
root: `dpkg --add-architecture i386 && apt-get update`).

The bzImage holds an xz-compressed vmlinux ELF after the setup sectors; we
decompress it and map its PT_LOAD segments at their virtual addresses.
The kernel is seen at its link addresses with its exported functions as
entries (bt/images/kernel_view.py, the same view `bt-scan --kernel-exports`
scans): the ELF entry point (startup_32, linked at its physical address,
moved to the virtual one) plus every function exported through
__ksymtab/__ksymtab_gpl whose address falls in .text/.init.text.
"""
from __future__ import annotations

import argparse
import gc
import glob
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bt.images.kernel_view import kernel_view  # noqa: E402
from scanner.memory import SegmentMemory  # noqa: E402
from scanner.scan import Scanner  # noqa: E402


def fetch_deb(tmp: str) -> str:
    out = subprocess.run(["apt-cache", "search", "--names-only", "linux-image-6.1.0-.*-686-unsigned"],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    names = sorted((ln.split()[0] for ln in out if ln.strip()),
                   key=lambda n: int(n.split("-")[3]))
    if not names:
        raise SystemExit("no linux-image-6.1.0-*-686-unsigned package: "
                         "run dpkg --add-architecture i386 && apt-get update")
    subprocess.run(["apt-get", "download", names[-1] + ":i386"], cwd=tmp, check=True,
                   capture_output=True)
    return glob.glob(os.path.join(tmp, "*.deb"))[0]


def vmlinuz_from_deb(deb: str, tmp: str) -> str:
    subprocess.run(["dpkg-deb", "-x", deb, os.path.join(tmp, "x")], check=True)
    return glob.glob(os.path.join(tmp, "x", "boot", "vmlinuz-*"))[0]


def load_kernel(path: str, data: bytes):
    """(memory, entry, exported functions) of the kernel at its link addresses."""
    view = kernel_view(path, data)
    return SegmentMemory(view.segments), view.entry, view.exports


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vmlinuz")
    p.add_argument("--deb")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--engines", default="c,python",
                   help="comma-separated scanner engines to time (c: scanner/_walk.c, python: the reference walk)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = a.vmlinuz
        if path is None:
            path = vmlinuz_from_deb(a.deb or fetch_deb(tmp), tmp)
        data = open(path, "rb").read()
    t = time.perf_counter()
    mem, entry, funcs = load_kernel(path, data)
    print(f"kernel: {os.path.basename(path)}  loaded in {time.perf_counter() - t:.1f}s")
    print(f"entries: ELF entry {entry:#x} + {len(funcs)} exported functions (__ksymtab*)")
    # Reference: capstone's own disasm_lite linear sweep of .text on this machine
    # right now (the ceiling for anything that decodes with it).
    import capstone
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    text = mem.read(0xC1000000, 4 << 20) or b""
    t = time.perf_counter()
    n = 0
    for off in range(0, len(text), 4096):
        for _ in md.disasm_lite(text[off:off + 4096], 0xC1000000 + off):
            n += 1
    ref = n / (time.perf_counter() - t)
    print(f"reference: capstone disasm_lite linear sweep {ref:,.0f} instructions/s")
    engines = a.engines.split(",")
    rates: dict[str, list[float]] = {e: [] for e in engines}
    for r in range(a.repeat):
        for eng in engines:         # alternate, so machine noise hits both alike
            sc = Scanner(mem.read, engine=eng)
            t = time.perf_counter()
            sc.scan([entry], "entry")
            cfg = sc.scan(funcs, "ksymtab")
            dt = time.perf_counter() - t
            n = cfg.instruction_count()
            rate = n / dt
            print(f"run {r + 1} {sc.engine:6s}: {n} instructions in {dt:.2f}s = {rate:,.0f} instructions/s "
                  f"(capstone decoded {sc.decoded})")
            rates[eng].append(rate)
            st = cfg.stats()
            del sc, cfg
            gc.collect()
    print("summary:", {k: v for k, v in st.items()})
    med = {}
    for eng, rs in rates.items():
        rs.sort()
        med[eng] = rs[len(rs) // 2]
        print(f"{eng}: median {med[eng]:,.0f} instructions/s  best {rs[-1]:,.0f}")
    if "c" in med and "python" in med:
        print(f"ratio c/python (medians, same run): {med['c'] / med['python']:.2f}")
    print("(this machine's speed varies; compare ratios within one run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
