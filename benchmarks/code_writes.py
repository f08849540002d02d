"""Guest stores under bt as the number of scanned code pages grows (issue 15/18).

    python benchmarks/code_writes.py [--pages 1,100,1000] [--stores N] [--repeat R] [--json FILE]

bt watches guest stores into scanned code with native UC_HOOK_MEM_WRITE hooks
(runtime/csam.py, runtime/_clock.c `write_hook`).  Unicorn checks every store
on its slow path against every write hook's range, so the number of hooks, not
their ranges, sets the cost of every store (docs/benchmarks.md, "Stores as code
grows").  The guest here is a chain of N code pages (each a `jmp` to the next,
scanned in one lazy scan, with one page in the middle skipped: data between
code pages) followed by a loop of stores either to a data page far from the
code ("outside") or to the skipped page ("inside").  Since the hook ranges are
cut at gaps down to one page (runtime/hookspans.py), the skipped page lies
outside both of the chain's ranges; before, it was inside the one span.  Each row is
bt's CPU time for the run (median of R), the store loop dominating it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bt.images.image import GuestImage, Segment  # noqa: E402
from bt.machine import MachineConfig  # noqa: E402

LOAD = 0x100000
PAGE = 0x1000
FAR_DATA = 0x1800000      # 24 MiB: above every code page of the largest guest here
STACK = 0x90000
MEM = 32 << 20


def chain_guest(pages: int, stores: int, where: str) -> GuestImage:
    """`pages` code pages from LOAD, page i jumping to page i+1 (the page after the
    middle one is skipped and never scanned when pages > 2), the last holding the
    store loop.  Stores go to FAR_DATA ("outside") or to the skipped page
    ("inside"; with fewer than 3 pages there is none, so "outside" only)."""
    from keystone import Ks, KS_ARCH_X86, KS_MODE_32
    gap = pages // 2 + 1 if pages > 2 else None
    code_pages = [i for i in range(pages + (1 if gap else 0)) if i != gap]
    image = bytearray(PAGE * (code_pages[-1] + 1))
    for here, there in zip(code_pages, code_pages[1:]):
        a = LOAD + here * PAGE
        rel = (LOAD + there * PAGE) - (a + 5)
        image[here * PAGE:here * PAGE + 5] = b"\xe9" + rel.to_bytes(4, "little", signed=True)
    target = FAR_DATA if where == "outside" else LOAD + gap * PAGE
    last = LOAD + code_pages[-1] * PAGE
    loop = (f"mov ecx, {stores}\nxor edx, edx\nl:\nmov dword ptr [{target:#x} + edx], ecx\n"
            "add edx, 4\nand edx, 0xff\ndec ecx\njnz l\nmov al, 0\nout 0xf4, al\nhlt")
    enc, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(loop, last)
    image[code_pages[-1] * PAGE:code_pages[-1] * PAGE + len(enc)] = bytes(enc)
    return GuestImage(path=f"bench:code-writes-{pages}-{where}", format="raw", entry=LOAD,
                      segments=[Segment(LOAD, bytes(image))], regs={"esp": STACK},
                      name=f"code-writes-{pages}")


def run_once(pages: int, stores: int, where: str):
    from runtime.vm import VM
    vm = VM(chain_guest(pages, stores, where), MachineConfig(mode="bt", mem_mib=MEM >> 20),
            stdout=io.BytesIO())
    t0 = time.process_time()
    r = vm.run()
    cpu = time.process_time() - t0      # the machine is shared: CPU time, not wall
    if r.exit_status != 0 or r.reason != "debug-exit":
        raise SystemExit(f"{pages} pages, {where}: guest did not finish ({r.reason}: {r.message})")
    return r, vm, cpu


def native_write_hooks(vm) -> int | None:
    """bt's code-write hooks alive at the end (None on a tree that does not say)."""
    n = getattr(vm.clock, "code_write_hooks", None)
    return n() if callable(n) else None


def bench(pages_list: list[int], stores: int, repeat: int) -> list[dict]:
    rows = []
    for pages in pages_list:
        for where in ("outside", "inside") if pages > 2 else ("outside",):
            walls, r, vm = [], None, None
            for _ in range(repeat):
                r, vm, cpu = run_once(pages, stores, where)
                walls.append(cpu)
            csam = r.extra["csam"]
            rows.append({"code_pages": csam["code_pages"], "stores_to": where, "stores": stores,
                         "median_cpu_s": statistics.median(walls), "min_cpu_s": min(walls),
                         "ns_per_store": 1e9 * statistics.median(walls) / stores,
                         "code_write_hooks": native_write_hooks(vm),
                         "write_hook_spans": csam.get("write_hook_spans"),
                         "retired": r.retired})
    return rows


def positive_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("page counts must be >= 1")
    return values


def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--pages", type=positive_list, default=[1, 100, 1000])
    p.add_argument("--stores", type=positive, default=2_000_000)
    p.add_argument("--repeat", type=positive, default=3)
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    if max(a.pages) * PAGE + LOAD + PAGE >= FAR_DATA:
        p.error(f"at most {(FAR_DATA - LOAD) // PAGE - 2} pages")
    rows = bench(a.pages, a.stores, a.repeat)
    print(f"bt, {a.stores:,} guest stores after a chain of code pages; median of {a.repeat} runs\n")
    print("| code pages | stores to | CPU s (median) | ns per store | code-write hooks | span growths |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['code_pages']} | {r['stores_to']} | {r['median_cpu_s']:.3f} | {r['ns_per_store']:.0f} | "
              f"{'-' if r['code_write_hooks'] is None else r['code_write_hooks']} | "
              f"{'-' if r['write_hook_spans'] is None else r['write_hook_spans']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"benchmark": "code-writes", "stores": a.stores, "repeat": a.repeat, "rows": rows}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
