"""Unicorn 2.1.4: every single-site code hook costs every translated block.

For each instruction it translates, Unicorn asks whether a UC_HOOK_CODE hook
covers its address by walking the whole list of code hooks (its
HOOK_BOUND_CHECK loop; in a Linux boot's profile ~90% of `disas_insn`'s self
time, each list node a cache miss).  A hook's range is one interval, so the
VMM adds one hook per site it must see (the clock's sync hooks at its fix
sites, the CPU model's sites: 124 by the init marker), and each makes every
later translation slower, though none covers the code being translated
(docs/benchmarks.md, "The kernel phase under emulate: where the time goes").
"""
from __future__ import annotations

import time

from keystone import Ks, KS_ARCH_X86, KS_MODE_32
from unicorn import Uc, UC_ARCH_X86, UC_MODE_32, UC_HOOK_CODE
from unicorn import x86_const as X

BASE = 0x10000
FAR = 0x180000                      # where the hooks are: no block runs there
BLOCKS = 1000


def _code() -> bytes:
    """BLOCKS blocks of four instructions, each jumping to the next: every
    block is translated once and run once."""
    asm = "\n".join(f"b{i}: add eax, {i}\nxor ebx, eax\ninc ecx\njmp b{i + 1}"
                    for i in range(BLOCKS)) + f"\nb{BLOCKS}: hlt"
    return bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(asm, BASE)[0])


def _run(code: bytes, hooks: int) -> tuple[float, int]:
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x200000)
    uc.mem_write(BASE, code)
    for k in range(hooks):
        uc.hook_add(UC_HOOK_CODE, lambda *a: None, None, FAR + 16 * k, FAR + 16 * k)
    t = time.process_time()
    uc.emu_start(BASE, BASE + len(code) - 1)
    return time.process_time() - t, uc.reg_read(X.UC_X86_REG_ECX)


def test_code_hooks_elsewhere_slow_every_translation():
    code = _code()
    best = {0: float("inf"), 500: float("inf")}
    for _ in range(3):                  # interleaved rounds, best of each: a shared machine
        for n in best:
            dt, ecx = _run(code, n)
            assert ecx == BLOCKS        # every block ran, once
            best[n] = min(best[n], dt)
    # measured ~3.5x (4.5 -> 17 us a block; 124 hooks: ~7.5 us); asked: 1.5x
    assert best[500] > 1.5 * best[0], best
