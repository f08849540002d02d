"""The VMM's native page walk (runtime/_walk.c over runtime/pagewalk.h, also the
instruction clock's) gives exactly what the Python reference walk gives
(runtime/memory.py `translate_reference`, pinned to Unicorn's MMU by
tests/runtime/test_guest_memory.py): the same physical address, or a #PF with
the same error code, on random tables (two-level with and without PSE,
PSE-36 bits and the reserved bit 21, PAE with 2 MiB pages, NX with and without
EFER.NXE, reserved bits, tables outside RAM, not-present entries, user and
supervisor, reads, writes and fetches, CR0.WP on and off).  A VM's memory uses
the native walk, reading the registers from the live CPU state."""
import random
import struct

import pytest
from unicorn import x86_const as X

from bt.images.image import GuestImage, Segment
from bt.machine import MachineConfig
from runtime._walk import walk
from runtime.memory import GuestMemory, PageFault
from runtime.quirks import scratch_engine
from runtime.vm import VM

RAM_PAGES = 24                 # tables and frames: entries also point past RAM (pages 24-31)
RAM = RAM_PAGES << 12
EFER = 0xC0000080

FLAGS32 = [1, 2, 4, 0x80]
EXTRA32 = [1 << 21, 1 << 13, 0x80 << 13, 0x20, 0x40]
FLAGS64 = [1, 2, 4, 0x80]
EXTRA64 = [1 << 63, 1 << 40, 1 << 52, 1 << 62, 1 << 13, 1 << 20, 1 << 35]


def random_entry(rng: random.Random, pae: bool) -> int:
    frame = rng.randrange(32)
    if pae and rng.random() < 0.05:
        frame |= rng.randrange(1, 1 << 16) << 20     # an address past 4 GiB
    entry = frame << 12
    for bit in FLAGS64 if pae else FLAGS32:
        if rng.random() < (0.85 if bit == 1 else 0.5):
            entry |= bit
    for bit in EXTRA64 if pae else EXTRA32:
        if rng.random() < 0.08:
            entry |= bit
    return entry


def random_tables(rng: random.Random, pae: bool) -> bytes:
    fmt, n = ("<Q", 512) if pae else ("<I", 1024)
    return b"".join(struct.pack(fmt, random_entry(rng, pae)) for _ in range(n * RAM_PAGES))


def native(ram: bytes, cr0: int, cr3: int, cr4: int, efer: int, linear: int, access: int):
    r = walk(ram, cr0, cr3, cr4, efer, linear, access)
    return ("pa", r) if r >= 0 else ("pf", -r - 1)


def reference(mem: GuestMemory, linear: int, access: int):
    try:
        return ("pa", mem.translate_reference(linear, write=bool(access & 2), user=bool(access & 4),
                                              fetch=bool(access & 16)))
    except PageFault as pf:
        return ("pf", pf.error_code)


@pytest.mark.parametrize("pae", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_native_walk_matches_the_reference_on_random_tables(seed, pae):
    rng = random.Random(seed * 2 + pae)
    ram = random_tables(rng, pae)
    uc = scratch_engine(RAM, 0x1000)
    uc.mem_write(0, ram)
    mem = GuestMemory(uc, RAM)
    outcomes = set()
    for regs in range(8):
        pse, wp, nxe = regs & 1, regs & 2, regs & 4
        cr3 = (rng.randrange(RAM_PAGES) << 12) | (rng.randrange(128) << 5 if pae else 0)
        cr4 = (0x20 if pae else 0) | (0x10 if pse else 0)
        cr0 = 0x80000011 | (0x10000 if wp else 0)
        efer = 0x800 if nxe else 0
        uc.reg_write(X.UC_X86_REG_CR3, cr3)
        uc.reg_write(X.UC_X86_REG_CR4, cr4)
        uc.reg_write(X.UC_X86_REG_CR0, cr0)
        uc.msr_write(EFER, efer)
        for _ in range(150):
            linear = rng.randrange(1 << 32)
            for access in (0, 2, 4, 6, 16, 20):
                want = reference(mem, linear, access)
                got = native(ram, cr0, cr3, cr4, efer, linear, access)
                assert got == want, (f"linear {linear:#x} access {access:#x} cr3 {cr3:#x} cr4 {cr4:#x} "
                                     f"cr0 {cr0:#x} efer {efer:#x}: native {got}, reference {want}")
                outcomes.add(want if want[0] == "pf" else "pa")
    # The tables reach every kind of answer: a translation, not present, a
    # protection fault (P), a reserved bit (RSVD), for user and supervisor.
    codes = {o[1] for o in outcomes if o != "pa"}
    assert "pa" in outcomes
    assert {0, 2, 4, 6} <= codes, codes                      # not present
    assert codes & {1, 3, 5, 7}, codes                       # protection
    assert codes & {9, 11, 13, 15}, codes                    # reserved bit
    if pae:
        assert codes & {0x11, 0x15}, codes                   # a fetch with NXE


def test_a_vm_walks_natively_with_the_live_registers():
    """The VM's GuestMemory reads CR0/CR3/CR4/EFER from the live CPU state
    (runtime/quirks.py offsets): after reg_write of each, its native answer is
    the reference walk's."""
    image = GuestImage(path="test", format="raw", entry=0x1000, segments=[Segment(0x1000, b"\xf4")])
    vm = VM(image, MachineConfig(mem_mib=1), stdout=None)
    mem = vm.mem
    assert mem._walker is not None, "the VM has the live CPU state: the walk must be native"
    rng = random.Random(7)
    for pae in (False, True):
        ram = random_tables(rng, pae)[:RAM]
        vm.uc.mem_write(0, ram)
        for regs in range(8):
            cr3 = rng.randrange(RAM_PAGES) << 12
            vm.uc.reg_write(X.UC_X86_REG_CR3, cr3)
            vm.uc.reg_write(X.UC_X86_REG_CR4, (0x20 if pae else 0) | (0x10 if regs & 1 else 0))
            vm.uc.msr_write(EFER, 0x800 if regs & 4 else 0)
            vm.uc.reg_write(X.UC_X86_REG_CR0, 0x80000011 | (0x10000 if regs & 2 else 0))
            assert mem.paging()
            for _ in range(100):
                linear = rng.randrange(1 << 32)
                for access in (0, 2, 4, 6, 16):
                    try:
                        got = ("pa", mem.translate(linear, bool(access & 2), bool(access & 4), bool(access & 16)))
                    except PageFault as pf:
                        got = ("pf", pf.error_code)
                    assert got == reference(mem, linear, access), (pae, regs, hex(linear), access)
    vm.uc.reg_write(X.UC_X86_REG_CR0, 0x11)
    assert not mem.paging()
    assert mem.translate(0xDEADBEEF) == 0xDEADBEEF          # paging off: identity
