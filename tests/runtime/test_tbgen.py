"""Unicorn's translation generation (runtime/tbgen.py) and the clock's blocks
known unchanged (runtime/_clock.c): which events move the two counters, which
do not, and a clock that still recounts code changed after a flush."""
from __future__ import annotations

import ctypes

import pytest

from keystone import KS_ARCH_X86, KS_MODE_32, Ks
from unicorn import UcError
from unicorn import x86_const as X

from runtime import tbgen
from runtime.clock import InstructionClock
from runtime.quirks import Quirks, scratch_engine

RAM = 0x100000


def asm(src: str, at: int) -> bytes:
    return bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(src, at)[0])


def bare():
    uc = scratch_engine(RAM, host_backed=True)
    return uc, uc.host_buf, uc.host_ram


def go(uc, at: int) -> None:
    try:
        uc.emu_start(at, 0)
    except UcError:
        pass


def test_calibration_finds_the_generation_counters():
    g = tbgen.counters()
    assert g.invalidated < g.flushed < g.invalidated + tbgen.SPAN
    uc, _buf, _ = bare()
    go(uc, 0x1000)
    inv, fl = tbgen.addresses(uc)
    assert inv and fl


def test_invalidations_and_flushes_move_the_counters_host_writes_do_not():
    uc, _buf, _ = bare()
    uc.mem_write(0x2000, asm("mov eax, 1; hlt", 0x2000))
    uc.mem_write(0x1000, asm("mov dword ptr [0x2001], 2; hlt", 0x1000))
    go(uc, 0x2000)
    inv, fl = tbgen.addresses(uc)
    read = lambda: (ctypes.c_uint64.from_address(inv).value, ctypes.c_uint32.from_address(fl).value)
    i0, f0 = read()
    go(uc, 0x1000)                        # a guest store into the translated block
    assert read() == (i0 + 1, f0)
    go(uc, 0x2000)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 2
    uc.ctl_flush_tb()
    assert read() == (i0 + 1, f0 + 1)
    go(uc, 0x2000)
    uc.mem_write(0x2001, (7).to_bytes(4, "little"))     # from the host: Unicorn does not see it
    assert read() == (i0 + 1, f0 + 1)
    go(uc, 0x2000)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 2           # the translated block, not the new bytes


def clocked():
    uc, buf, host = bare()
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    clock = InstructionClock(uc)
    clock.set_memory([(0, RAM, host)])
    q = Quirks(uc)
    clock.set_cpu_state(q.env, *q.off.cr)
    assert clock.enable_fast_stores(RAM, q.off.hflags) == ""
    assert clock.generation_problem == ""
    return uc, clock, buf


def test_a_loop_is_compared_once_per_block():
    uc, clock, _buf = clocked()
    uc.mem_write(0x1000, asm("mov ecx, 1000; l: dec ecx; jnz l; hlt", 0x1000))
    clock.run(0x1000, 10_000, lambda: False)
    assert clock.count == 1 + 2 * 1000 + 1
    assert clock.stats()["unchanged_blocks"] >= 990


def test_a_new_fast_stores_table_learns_the_pages_of_blocks_known_unchanged():
    """A block known unchanged skips the code-page check when its page is
    marked in the current fast-stores table (Entry.fs_epoch); a new table
    starts empty, so the same blocks must mark their page in it again."""
    uc, clock, _buf = clocked()
    uc.mem_write(0x1000, asm("mov ecx, 1000; l: dec ecx; jnz l; hlt", 0x1000))
    clock.run(0x1000, 10_000, lambda: False)
    assert clock.stats()["store_code_pages"] == 1
    q = Quirks(uc)
    assert clock.enable_fast_stores(RAM, q.off.hflags) == ""
    clock.run(0x1000, 10_000, lambda: False)
    st = clock.stats()
    assert st["unchanged_blocks"] >= 1990
    assert st["store_code_pages"] == 2          # the counter goes on; the new table has the page


def test_code_changed_after_a_flush_is_counted_from_its_new_bytes():
    """After a flush a guest store into code invalidates nothing (nothing is
    translated), so only the flush counter tells the clock to compare again."""
    a = asm("nop\nnop\nnop\nnop\nhlt", 0x2000)             # 5 instructions, 5 bytes
    b = asm("mov ax, 1\nhlt", 0x2000)                      # 2 instructions, same size
    assert len(a) == len(b) == 5
    uc, clock, _buf = clocked()
    uc.mem_write(0x2000, a)
    clock.run(0x2000, 100, lambda: False)
    assert clock.count == 5
    clock.run(0x2000, 100, lambda: False)
    assert clock.count == 5 and clock.stats()["unchanged_blocks"] >= 1
    uc.ctl_flush_tb()
    store = f"mov dword ptr [0x2000], {int.from_bytes(b[:4], 'little'):#x}; mov byte ptr [0x2004], {b[4]:#x}; hlt"
    uc.mem_write(0x1000, asm(store, 0x1000))
    clock.run(0x1000, 100, lambda: False)
    clock.run(0x2000, 100, lambda: False)
    assert clock.count == 2 and uc.reg_read(X.UC_X86_REG_AX) == 1


def test_a_calibration_runs_once_and_a_failure_is_kept():
    from runtime.quirks import once_per_process
    calls = []

    def good():
        calls.append(1)
        return object()
    found = once_per_process(good, tbgen.TBGenError)
    assert found() is found() and len(calls) == 1

    def odd():
        calls.append(2)
        raise KeyError("not 2.1.4")
    failing = once_per_process(odd, tbgen.TBGenError)
    for _ in range(2):
        with pytest.raises(tbgen.TBGenError, match="calibration failed"):
            failing()
    assert calls.count(2) == 1
