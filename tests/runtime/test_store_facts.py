"""Unicorn 2.1.4 facts behind fast stores (runtime/softtlb.py, runtime/faststores.h).

Bare engines only, no VM: where the software TLB is, that every store to an x86
RAM page without NX takes the slow path whatever hooks exist, that clearing
TLB_NOTDIRTY puts a page's stores on the inline path, that an unmarked entry
of a page with translated code lets a store change that code unseen (why code
pages must keep the mark), and that a TLB flush from inside a block hook
marks the entries again before the block's own stores run; and that write and
write-protection hooks fire through an unmarked entry (fast stores under trap
and bt).
"""
from __future__ import annotations

import ctypes
import time

from keystone import KS_ARCH_X86, KS_MODE_32, Ks
from unicorn import UC_HOOK_BLOCK, UcError
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from runtime import softtlb
from runtime.fastuc import TLB_FLUSH
from runtime.quirks import Quirks, scratch_engine

RAM = 0x100000
DATA = 0x45000
NEVER = 2 ** 64 - 1


def asm(src: str, at: int) -> bytes:
    return bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(src, at)[0])


class Bare:
    """A CPL-0 engine on host RAM (as the VM maps it), flat segments."""

    def __init__(self):
        self.uc = uc = scratch_engine(RAM, host_backed=True)
        self.buf, self.host = uc.host_buf, uc.host_ram
        self.env = Quirks(uc).env
        assert self.env is not None

    def run(self, at: int, src: str) -> None:
        code = asm(src + "\nhlt", at)
        self.uc.mem_write(at, code)
        try:
            self.uc.emu_start(at, 0)
        except UcError:
            pass
        assert self.uc.reg_read(X.UC_X86_REG_EIP) == at + len(code)

    def write_entries(self, page: int):
        return [e for e in softtlb.entries(self.env) if e[2] & ~0xFFF == page and e[2] != NEVER]

    def unmark(self, page: int) -> int:
        n = 0
        for *_, w, _c, _p, _a, at in self.write_entries(page):
            ctypes.c_uint64.from_address(at).value = w & ~softtlb.TLB_NOTDIRTY
            n += 1
        return n


def test_calibration_finds_the_software_tlb():
    lay = softtlb.layout()
    assert lay.modes == 3                        # x86: NB_MMU_MODES
    assert 1 << lay.entry_bits >= 40             # addr_read/write/code, paddr, addend
    assert (lay.write, lay.code, lay.paddr, lay.addend) == (8, 16, 24, 32)


def test_every_store_to_an_executable_ram_page_stays_on_the_slow_path():
    """The entry keeps TLB_NOTDIRTY after any number of stores: Unicorn's
    notdirty_write clears it only when addr_code is -1, and an x86 page without
    NX is always executable.  No hook is registered here at all."""
    b = Bare()
    b.run(0x1000, "mov ecx, 100\nl: mov [0x45000], ecx\nmov [0x45ffc], ecx\ndec ecx\njnz l")
    (entry,) = b.write_entries(DATA)
    _, _, w, code, paddr, addend, _ = entry
    assert w == DATA | softtlb.TLB_NOTDIRTY
    assert code == DATA                          # executable: the reason it stays marked
    assert paddr == DATA and addend == b.host    # Unicorn's physical page; host - virtual


def test_an_unmarked_entry_is_the_inline_fast_path():
    """The same store loop, its page's entry unmarked first: many times faster
    (seen 9-10x on this machine; asked for 3x), and every store lands."""
    loop = ("mov ecx, 1000000\nl: mov [0x45000], ecx\nmov [0x45004], ecx\nmov [0x45008], ecx\n"
            "dec ecx\njnz l")
    times = {True: [], False: []}
    for unmark in (False, True, False, True):
        b = Bare()
        b.run(0x2000, "mov dword ptr [0x45000], 7")      # the entry exists
        if unmark:
            assert b.unmark(DATA) == 1
        t = time.process_time()
        b.run(0x1000, loop)
        times[unmark].append(time.process_time() - t)
        assert bytes(b.uc.mem_read(DATA, 12)) == (1).to_bytes(4, "little") * 3
        assert b.write_entries(DATA)[0][2] == DATA | (0 if unmark else softtlb.TLB_NOTDIRTY)
    assert min(times[False]) > 3 * min(times[True]), times


def test_an_unmarked_entry_of_a_code_page_lets_a_store_change_translated_code_unseen():
    """Why pages holding translated code keep the mark: through an unmarked
    entry a store into a translated block does not invalidate it, and the stale
    translation runs.  Marked (Unicorn's default), the store is seen."""
    results = {}
    for unmark in (False, True):
        b = Bare()
        b.run(0x2000, "mov eax, 1")                      # translated; its page's entry filled
        if unmark:
            assert b.unmark(0x2000) == 1
        # mov eax, imm32 is b8 imm32: rewrite the immediate, then run the block again
        b.run(0x1000, "mov dword ptr [0x2001], 2")
        try:
            b.uc.emu_start(0x2000, 0)
        except UcError:
            pass
        results[unmark] = b.uc.reg_read(X.UC_X86_REG_EAX)
        assert bytes(b.uc.mem_read(0x2001, 4)) == (2).to_bytes(4, "little")
    assert results == {False: 2, True: 1}


def test_a_tlb_flush_inside_a_block_hook_marks_the_entries_before_the_blocks_stores():
    """The clock's remedy when a page it unmarked becomes code: uc_ctl TLB_FLUSH
    from the block hook, before the block runs.  The refilled entry is marked
    again and the same store as above is seen."""
    b = Bare()
    b.run(0x2000, "mov eax, 1")
    assert b.unmark(0x2000) == 1
    flushed = []

    def hook(uc, addr, size, _):
        if addr == 0x1000 and not flushed:
            assert uclib.uc_ctl(uc._uch, TLB_FLUSH) == 0     # as runtime/faststores.h calls it
            flushed.append(addr)
    b.uc.hook_add(UC_HOOK_BLOCK, hook)
    b.run(0x1000, "mov dword ptr [0x2001], 2")
    try:
        b.uc.emu_start(0x2000, 0)
    except UcError:
        pass
    assert flushed == [0x1000]
    assert b.uc.reg_read(X.UC_X86_REG_EAX) == 2
    assert b.write_entries(0x2000)[0][2] & softtlb.TLB_NOTDIRTY


def test_write_hooks_fire_on_an_unmarked_entry_and_it_stays_unmarked():
    """Why trap and bt can have fast stores too: any write hook sends a
    block's stores to store_helper (runtime/faststores.h), which calls the
    UC_HOOK_MEM_WRITE hooks before it looks at TLB_NOTDIRTY.  So through an
    unmarked entry every hook still sees every store, and only notdirty_write
    (QEMU's SMC check of each store) is skipped: the entry stays unmarked."""
    from unicorn import UC_HOOK_MEM_WRITE
    loop = "mov ecx, 20000\nl: mov [0x45000], ecx\nmov [0x45004], ecx\ndec ecx\njnz l"
    for unmark in (False, True):
        b = Bare()
        seen = []
        b.uc.hook_add(UC_HOOK_MEM_WRITE, lambda uc, acc, addr, size, value, _: seen.append(addr),
                      begin=DATA + 4, end=DATA + 7)
        b.run(0x2000, "mov dword ptr [0x45000], 7")      # the entry exists
        if unmark:
            assert b.unmark(DATA) == 1
        b.run(0x1000, loop)
        assert seen == [DATA + 4] * 20000, unmark         # every store in the hook's range
        assert bytes(b.uc.mem_read(DATA, 8)) == (1).to_bytes(4, "little") * 2
        assert b.write_entries(DATA)[0][2] == DATA | (0 if unmark else softtlb.TLB_NOTDIRTY)


def test_a_write_protection_hook_fires_on_an_unmarked_entry():
    """The isolation guard's kind of hook: a store into a region without
    write permission raises UC_HOOK_MEM_WRITE_PROT through an unmarked entry
    as through a marked one (region permissions are not in the TLB; a write
    hook elsewhere keeps the stores on store_helper, as trap and bt always
    have one)."""
    from unicorn import UC_HOOK_MEM_WRITE, UC_HOOK_MEM_WRITE_PROT, UC_PROT_READ, UC_PROT_EXEC
    for unmark in (False, True):
        b = Bare()
        b.uc.hook_add(UC_HOOK_MEM_WRITE, lambda *a: None, begin=NEVER - 0xFFF, end=NEVER)
        b.uc.mem_protect(DATA, 0x1000, UC_PROT_READ | UC_PROT_EXEC)
        b.run(0x2000, "mov eax, dword ptr [0x45000]")    # fills the page's entry, write part too
        if unmark:
            assert b.unmark(DATA) == 1
        events = []

        def prot(uc, acc, addr, size, value, _):
            events.append((addr, value))
            return True
        b.uc.hook_add(UC_HOOK_MEM_WRITE_PROT, prot)
        b.run(0x1000, "mov dword ptr [0x45000], 9")
        assert events == [(DATA, 9)], unmark
