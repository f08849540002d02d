"""The instruction clock's exact slice end where the CS base is not 0 (real
mode here; virtual-8086 mode alike, tests/runtime/test_v86.py's ticks): the
clock's block table and its exit are linear addresses (QEMU's tb->pc), while
emu_start takes EIP, so the block it re-runs to stop at the budget's
instruction must be started at linear - CS base (runtime/clock.py `run`)."""
from __future__ import annotations

import ctypes
import mmap

import pytest
from keystone import Ks, KS_ARCH_X86, KS_MODE_16
from unicorn import Uc, UC_ARCH_X86, UC_MODE_32
from unicorn import x86_const as X

from runtime.clock import STOP_AT, STOP_BEFORE, InstructionClock
from runtime.quirks import Quirks

RAM = 0x100000
SEG = 0x1000                # CS: base 0x10000
IP = 0x0100
CR0_ET = 0x10

# Blocks of different lengths with a store, so a wrong stop shows.
LOOP = bytes(Ks(KS_ARCH_X86, KS_MODE_16).asm("""
    mov cx, 60
    xor ax, ax
    xor dx, dx
l:  add ax, cx
    rol ax, 3
    mov bx, dx
    mov word ptr [bx + 0x800], ax
    add dx, 2
    and dx, 0x1f
    test cx, 1
    jz even
    xor ax, 0x55
    inc si
even:
    dec cx
    jnz l
    hlt
""", IP)[0])
TOTAL = 3 + 60 * 10 + 30 * 2 + 1


def _real(uc) -> None:
    uc.mem_write((SEG << 4) + IP, LOOP)
    uc.reg_write(X.UC_X86_REG_CR0, CR0_ET)
    for r in (X.UC_X86_REG_CS, X.UC_X86_REG_DS, X.UC_X86_REG_SS):
        uc.reg_write(r, SEG)
    uc.reg_write(X.UC_X86_REG_ESP, 0x700)


def _engine():
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    ram = mmap.mmap(-1, RAM)
    ptr = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    uc.mem_map_ptr(0, RAM, 7, ptr)
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    _real(uc)
    clock = InstructionClock(uc)
    clock.set_memory([(0, RAM, ptr)])
    q = Quirks(uc)
    clock.set_cpu_state(q.env, *q.off.cr)
    clock.decode_code16(q.off.hflags)              # as runtime/vm.py does
    clock.code_base = lambda: SEG << 4          # as runtime/vm.py sets it
    return uc, clock, ram


def _state(uc) -> tuple:
    regs = tuple(uc.reg_read(r) for r in (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
                                         X.UC_X86_REG_ESI, X.UC_X86_REG_EIP, X.UC_X86_REG_CS))
    return regs + (bytes(uc.mem_read((SEG << 4) + 0x800, 0x20)),)


def _reference(n: int) -> tuple:
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, RAM)
    _real(uc)
    uc.emu_start(IP, 0, count=n)
    return _state(uc)


@pytest.mark.parametrize("n", [1, 4, 5, 9, 13, 100, 257, TOTAL - 1])
def test_a_real_mode_slice_ends_on_exactly_its_budget(n):
    uc, clock, _ = _engine()
    assert clock.run(IP, n, lambda: False) is None
    assert clock.count == n
    assert clock.reason in (STOP_BEFORE, STOP_AT)
    assert _state(uc) == _reference(n)


def test_real_mode_slices_add_up_to_the_same_run():
    uc, clock, _ = _engine()
    done = 0
    for b in (3, 7, 1, 12, 5, 40, 2, 9):
        clock.run(uc.reg_read(X.UC_X86_REG_EIP) if done else IP, b, lambda: False)
        assert clock.count == b
        done += b
    assert _state(uc) == _reference(done)
