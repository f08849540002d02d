"""What the instruction clock's per-block callback costs, split into its parts (issue 19).

Usage:
    python benchmarks/clock_cost.py [--rounds 5] [--iterations 3000000]

One CPU-bound guest loop on a bare Unicorn engine (guest RAM as host memory, as
the VM maps it), run the same number of instructions in each configuration,
rounds alternated so machine load falls on all alike; printed per configuration:
the median CPU seconds and nanoseconds per translated block executed.

    bare        no hook at all (Unicorn still calls helper_check_exit_request
                at every block start)
    noop-hook   one native UC_HOOK_BLOCK whose body is empty (runtime/_clock.c
                noop_hook): what Unicorn's call of any block hook costs
    clock       the instruction clock (runtime/clock.py) configured as the VM
                does under emulate (fast stores, the translation generation,
                the interrupt window), paging off: its body on the "blocks known
                unchanged" shortcut
    clock-pg    the same with paging on (4 KiB pages, identity map): the body
                walks the guest's page tables for every block
    count=N     no block hook; Unicorn's emu_start(count=N) (a per-instruction
                code hook inside Unicorn): the alternative the clock replaced

Two loops: `alu` (a block of 4 instructions, taken branch back) and `rep`
(`rep stosd`, whose every iteration is a block of one instruction, as the
Linux kernel's memset/memcpy run).  Block counts come from the clock itself.
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from keystone import Ks, KS_ARCH_X86, KS_MODE_32  # noqa: E402
from unicorn import Uc, UC_ARCH_X86, UC_MODE_32, UC_HOOK_BLOCK  # noqa: E402
from unicorn import x86_const as X  # noqa: E402

from runtime import _clock  # noqa: E402
from runtime.clock import InstructionClock  # noqa: E402
from runtime.fastuc import hook_add  # noqa: E402
from runtime.quirks import Quirks  # noqa: E402

RAM = 0x400000
CODE = 0x1000
PD = 0x10000            # page directory, then one page table (identity, 4 KiB pages)
PT = 0x11000
DATA = 0x100000         # rep stosd's destination (1 MiB, rewritten each pass)

LOOPS = {
    # 4 instructions a block
    "alu": ("mov ecx, {n}\nl: add eax, ecx\nxor ebx, eax\ndec ecx\njnz l\nhlt", 4),
    # 1 instruction a block: each rep iteration re-enters the rep's own block
    "rep": ("mov esi, {passes}\np: mov edi, 0x100000\nmov ecx, 0x40000\nrep stosd\n"
            "dec esi\njnz p\nhlt", 1),
}


def program(loop: str, iterations: int) -> tuple[bytes, int]:
    src, per = LOOPS[loop]
    if loop == "alu":
        text, insns = src.format(n=iterations), 1 + 4 * iterations + 1     # hlt included
    else:
        passes = max(1, iterations // 0x40000)
        text, insns = src.format(passes=passes), 1 + passes * (3 + 0x40000 + 2) + 1
    return bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(text, CODE)[0]), insns


def engine(code: bytes, paging: bool):
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    ram = mmap.mmap(-1, RAM)
    ptr = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    uc.mem_map_ptr(0, RAM, 7, ptr)
    uc.mem_write(CODE, code)
    uc.reg_write(X.UC_X86_REG_ESP, 0x9000)
    if paging:
        uc.mem_write(PD, struct.pack("<I", PT | 3))
        uc.mem_write(PT, b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024)))
        uc.reg_write(X.UC_X86_REG_CR3, PD)
        uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | 0x80000001)
    return uc, ram, ptr


def run(config: str, loop: str, iterations: int) -> tuple[float, int]:
    """CPU seconds of one run, and the blocks the clock counted (0 without it)."""
    code, insns = program(loop, iterations)
    uc, ram, ptr = engine(code, config == "clock-pg")
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    blocks = 0
    if config.startswith("clock"):
        clock = InstructionClock(uc)
        clock.set_memory([(0, RAM, ptr)])
        q = Quirks(uc)
        # configured as runtime/vm.py does under emulate
        clock.set_cpu_state(q.env, *q.off.cr, q.off.efer)
        clock.revive_memory_hooks(q.recur_mem_address())
        problem = clock.enable_fast_stores(RAM, q.off.hflags)
        assert not problem and not clock.generation_problem, (problem, clock.generation_problem)
        clock.watch_irq_window(q.off.eflags, q.off.hflags)
        clock.stop_after_io()
        t = time.process_time()
        clock.run(CODE, insns + 10, lambda: False)
        t = time.process_time() - t
        assert clock.count == insns, (config, loop, clock.count, insns)
        blocks = clock.stats()["blocks"]
    else:
        if config == "noop-hook":
            noop = _clock.callbacks()[1]
            hook_add(uc, UC_HOOK_BLOCK, noop, 0, 1, 0)
        t = time.process_time()
        if config == "count":
            uc.emu_start(CODE, 0, count=insns)
        else:
            uc.emu_start(CODE, 0)
        t = time.process_time() - t
    del uc
    ram.close()
    return t, blocks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iterations", type=int, default=20_000_000)
    args = p.parse_args(argv)
    configs = ["bare", "noop-hook", "clock", "clock-pg", "count"]
    for loop in LOOPS:
        times: dict[str, list[float]] = {c: [] for c in configs}
        blocks = 0
        for _ in range(args.rounds):
            for c in configs:
                t, b = run(c, loop, args.iterations)
                times[c].append(t)
                blocks = b or blocks
        bare = statistics.median(times["bare"])
        print(f"{loop}: {blocks:,} blocks")
        print(f"  {'config':10} {'CPU s':>7} {'ns/block':>9} {'ns/block over bare':>19}")
        for c in configs:
            m = statistics.median(times[c])
            print(f"  {c:10} {m:7.3f} {m / blocks * 1e9:9.2f} {(m - bare) / blocks * 1e9:19.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
