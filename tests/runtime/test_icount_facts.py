"""Unicorn 2.1.4 and instruction counting without a block callback (issue 19).

QEMU counts instructions with `-icount` by an inline decrement-and-branch at
every translated block's start (gen_tb_start, CF_USE_ICOUNT).  Unicorn 2.1.4
removed it: its gen_tb_start (qemu/include/exec/gen-icount.h) emits only a call
of helper_check_exit_request, curr_cflags() returns 0 so no block ever has
CF_USE_ICOUNT, and no uc_ctl turns counting on.  What Unicorn offers instead is
emu_start's `count`, which adds a UC_HOOK_CODE hook: a call before every
instruction.  These facts are why the instruction clock keeps its native
block hook (runtime/_clock.c) and makes the hook's body cheap instead
(docs/benchmarks.md, "The clock's per-block callback").
"""
from __future__ import annotations

import ctypes
import mmap
import time

import unicorn
import unicorn.unicorn_const as K
from keystone import Ks, KS_ARCH_X86, KS_MODE_32
from unicorn import Uc, UC_ARCH_X86, UC_MODE_32, UC_HOOK_BLOCK
from unicorn import x86_const as X

from runtime import _clock
from runtime.fastuc import hook_add

CODE = 0x1000
RAM = 0x100000


def asm(src: str) -> bytes:
    return bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(src, CODE)[0])


def engine(code: bytes):
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    ram = mmap.mmap(-1, RAM)
    uc.mem_map_ptr(0, RAM, 7, ctypes.addressof(ctypes.c_char.from_buffer(ram)))
    uc.mem_write(CODE, code)
    uc.reg_write(X.UC_X86_REG_ESP, 0x9000)
    return uc, ram


def test_unicorn_has_no_instruction_count_control():
    """The engine's controls in 2.1.4: none counts instructions (a Unicorn
    that adds one should be looked at for the clock: this test then fails)."""
    assert unicorn.__version__.startswith("2.1.4")
    controls = {k for k in dir(K) if k.startswith("UC_CTL_") and not k.startswith("UC_CTL_IO_")}
    assert controls == {
        "UC_CTL_CONTEXT_CPU", "UC_CTL_CONTEXT_MEMORY", "UC_CTL_CONTEXT_MODE", "UC_CTL_CPU_MODEL",
        "UC_CTL_TB_FLUSH", "UC_CTL_TB_REMOVE_CACHE", "UC_CTL_TB_REQUEST_CACHE",
        "UC_CTL_TCG_BUFFER_SIZE", "UC_CTL_TLB_FLUSH", "UC_CTL_TLB_TYPE", "UC_CTL_UC_ARCH",
        "UC_CTL_UC_EXITS", "UC_CTL_UC_EXITS_CNT", "UC_CTL_UC_MODE", "UC_CTL_UC_PAGE_SIZE",
        "UC_CTL_UC_TIMEOUT", "UC_CTL_UC_USE_EXITS"}
    assert not [k for k in dir(K) if "ICOUNT" in k]


def test_count_stops_inside_a_block():
    """`count` is checked before every instruction (a code hook), so a run
    ends in the middle of a translated block; a block hook sees the block
    once, before its first instruction."""
    uc, _ram = engine(asm("inc eax\ninc eax\ninc eax\ninc eax\ninc eax\nhlt"))
    starts = []
    uc.hook_add(UC_HOOK_BLOCK, lambda uc_, addr, size, ud: starts.append((addr, size)))
    uc.emu_start(CODE, 0, count=3)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 3
    assert uc.reg_read(X.UC_X86_REG_EIP) == CODE + 3
    assert starts[0] == (CODE, 6)       # the whole block, hlt included


def _best(run, rounds=5) -> float:
    """The least CPU time of a few runs: the one least disturbed by other jobs."""
    best = None
    for _ in range(rounds):
        t = time.process_time()
        run()
        t = time.process_time() - t
        best = t if best is None else min(best, t)
    return best


def test_a_native_block_hook_is_cheap_and_count_is_not():
    """Measured (benchmarks/clock_cost.py, a loop of 4-instruction blocks):
    bare ~3 ns a block, one native block hook with an empty body +~1 ns
    (Unicorn calls a lone block hook directly from the translated code),
    `count` +~45 ns.  Asserted with wide margins (a shared machine)."""
    loop = asm("mov ecx, 500000\nl: add eax, ecx\nxor ebx, eax\ndec ecx\njnz l\nhlt")
    insns = 1 + 4 * 500000 + 1

    def bare():
        uc, _ram = engine(loop)
        uc.emu_start(CODE, 0)

    def noop_hook():
        uc, _ram = engine(loop)
        hook_add(uc, UC_HOOK_BLOCK, _clock.callbacks()[1], 0, 1, 0)
        uc.emu_start(CODE, 0)

    def count():
        uc, _ram = engine(loop)
        uc.emu_start(CODE, 0, count=insns)
        assert uc.reg_read(X.UC_X86_REG_ECX) == 0

    t_bare, t_hook, t_count = _best(bare), _best(noop_hook), _best(count)
    assert t_hook < 3 * t_bare, (t_bare, t_hook)
    assert t_count > 3 * t_hook, (t_hook, t_count)
