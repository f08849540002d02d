"""Unicorn 2.1 facts a paging guest under trap/bt mode will be built on
(docs/paging-plan.md), each pinned by a test before anything relies on it.

Setup: non-PAE paging with 4 KiB pages.  Linear 0-4 MiB maps to itself;
linear 0x400000 is a second name for physical page 0x2000; linear 0xFFC00000
(page-directory entry 1023, the kind a VMM inserts for its hypervisor area)
maps to physical 0x180000.
"""
import struct

import pytest

from unicorn import (Uc, UcError, UC_HOOK_INTR, UC_HOOK_MEM_FETCH_PROT,
                     UC_HOOK_MEM_WRITE, UC_HOOK_MEM_WRITE_PROT, UC_PROT_ALL, UC_PROT_READ,
                     UC_PROT_WRITE, UC_PROT_EXEC)
from unicorn import x86_const as X

from conftest import assemble
from runtime.quirks import scratch_engine

PD, PT_LOW, PT_ALIAS, PT_HYPER = 0x10000, 0x11000, 0x12000, 0x13000
ALIAS, ALIAS_PHYS = 0x400000, 0x2000
HYPER, HYPER_PHYS = 0xFFC00000, 0x180000


def paged_engine(code: bytes, stub: bytes) -> Uc:
    uc = scratch_engine(0x200000, 0x9000)
    uc.mem_write(0x1000, code)
    uc.mem_write(HYPER_PHYS, stub)
    uc.mem_write(PT_LOW, b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024)))
    uc.mem_write(PT_ALIAS, struct.pack("<I", ALIAS_PHYS | 3))
    uc.mem_write(PT_HYPER, struct.pack("<I", HYPER_PHYS | 3))
    uc.mem_write(PD, struct.pack("<II", PT_LOW | 3, PT_ALIAS | 3))
    uc.mem_write(PD + 1023 * 4, struct.pack("<I", PT_HYPER | 3))     # the VMM's own entry
    uc.reg_write(X.UC_X86_REG_CR3, PD)
    uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | 0x80000001)
    uc.ctl_exits_enabled(True)            # no `until` probe (runtime/vm.py says why)
    uc.ctl_set_exits([])
    return uc


CODE = assemble(f"call {HYPER:#x}\nmov dword ptr [{ALIAS + 0x10:#x}], 0x55\nhlt", 0x1000)
STUB = assemble("mov eax, 0x1234\nret", HYPER)


def test_code_reached_only_through_an_inserted_directory_entry_runs_and_returns():
    uc = paged_engine(CODE, STUB)
    uc.emu_start(0x1000, 0, count=4)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x1234
    assert uc.mem_read(ALIAS_PHYS + 0x10, 1) == b"\x55"          # the store went through the alias


def test_memory_hooks_see_and_filter_on_physical_addresses():
    """With paging on, a write hook reports the physical address, and its
    begin/end range is compared with the physical address too: a hook on the
    linear alias's range never fires.  Write monitoring of code pages must be
    kept per physical page (which also catches every alias of a page)."""
    seen_all, seen_linear = [], []
    uc = paged_engine(CODE, STUB)
    uc.hook_add(UC_HOOK_MEM_WRITE, lambda u, a, addr, size, v, _: seen_all.append(addr), begin=1, end=0)
    uc.hook_add(UC_HOOK_MEM_WRITE, lambda u, a, addr, size, v, _: seen_linear.append(addr),
                begin=ALIAS, end=ALIAS + 0xFFF)
    uc.emu_start(0x1000, 0, count=4)
    assert ALIAS_PHYS + 0x10 in seen_all and ALIAS + 0x10 not in seen_all
    assert seen_linear == []


def test_protection_faults_report_physical_addresses():
    """mem_protect works on physical memory; a write through a linear alias to a
    write-protected page, and a fetch through the hypervisor's directory entry
    from a non-executable page, are reported at their physical addresses."""
    writes, fetches = [], []
    uc = paged_engine(CODE, STUB)

    def on_write(u, access, addr, size, value, _):
        writes.append(addr)
        u.mem_protect(ALIAS_PHYS, 0x1000, UC_PROT_ALL)
        return True

    def on_fetch(u, access, addr, size, value, _):
        fetches.append(addr)
        u.mem_protect(HYPER_PHYS, 0x1000, UC_PROT_ALL)
        return True

    uc.hook_add(UC_HOOK_MEM_WRITE_PROT, on_write)
    uc.hook_add(UC_HOOK_MEM_FETCH_PROT, on_fetch)
    uc.mem_protect(ALIAS_PHYS, 0x1000, UC_PROT_READ | UC_PROT_EXEC)
    uc.mem_protect(HYPER_PHYS, 0x1000, UC_PROT_READ | UC_PROT_WRITE)
    try:
        uc.emu_start(0x1000, 0, count=4)
    except UcError:
        pass
    assert fetches == [HYPER_PHYS]
    assert writes == [ALIAS_PHYS + 0x10]
    # As without paging: the handler's True does not perform the faulting write.
    assert uc.mem_read(ALIAS_PHYS + 0x10, 1) == b"\x00"


def test_tlb_keeps_a_stale_translation_until_the_tlb_flush_control():
    """Unicorn's TLB survives between emu_start calls: after the host rewrites a
    page-table entry, the guest still reaches the old frame.  The binding has no
    `ctl_flush_tlb` method in 2.1.4, but `uc_ctl(UC_CTL_TLB_FLUSH)` exists and
    flushes the whole TLB (there is no per-page form); after it the new frame is
    seen.  invlpg is emulated with it (runtime/emulation.py): flushing more
    than one entry is always allowed architecturally."""
    from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
    read = assemble(f"mov eax, dword ptr [{ALIAS:#x}]\nhlt", 0x1000)
    uc = paged_engine(read, STUB)
    uc.mem_write(ALIAS_PHYS, struct.pack("<I", 0x11111111))
    uc.mem_write(0x3000, struct.pack("<I", 0x22222222))
    uc.emu_start(0x1000, 0, count=1)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x11111111
    uc.mem_write(PT_ALIAS, struct.pack("<I", 0x3000 | 3))       # repoint the alias
    uc.emu_start(0x1000, 0, count=1)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x11111111          # stale TLB entry
    uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
    uc.emu_start(0x1000, 0, count=1)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x22222222


def test_the_pre_encoded_tlb_flush_is_the_bindings():
    """runtime/fastuc.py calls uc_ctl with the request word encoded once (the
    exit path's invlpg): it flushes exactly as uc.ctl does above."""
    from runtime.fastuc import FastUc
    read = assemble(f"mov eax, dword ptr [{ALIAS:#x}]\nhlt", 0x1000)
    uc = paged_engine(read, STUB)
    fast = FastUc(uc)
    uc.mem_write(ALIAS_PHYS, struct.pack("<I", 0x11111111))
    uc.mem_write(0x3000, struct.pack("<I", 0x22222222))
    uc.emu_start(0x1000, 0, count=1)
    uc.mem_write(PT_ALIAS, struct.pack("<I", 0x3000 | 3))
    uc.emu_start(0x1000, 0, count=1)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x11111111          # stale until the flush
    fast.flush_tlb()
    uc.emu_start(0x1000, 0, count=1)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x22222222


def test_the_walk_reads_tables_in_memory_the_guest_has_no_permission_on():
    """runtime/paging.py keeps the hypervisor area's page table inside the area,
    whose low part is mapped without any permission (runtime/hyper.py).  The
    MMU's walk reads it anyway, and no protection hook sees the walk: only the
    guest's own accesses are protection events."""
    import ctypes
    import mmap
    from unicorn import UC_HOOK_MEM_READ_PROT, UC_PROT_NONE
    uc = scratch_engine(0x200000, 0x9000)
    area = mmap.mmap(-1, 0x400000)
    host = ctypes.addressof(ctypes.c_char.from_buffer(area))
    uc.mem_map_ptr(HYPER, 0x40000, UC_PROT_NONE, host)
    uc.mem_map_ptr(HYPER + 0x40000, 0x3C0000, UC_PROT_EXEC, host + 0x40000)
    table = HYPER + 0x18000
    uc.mem_write(table, b"".join(struct.pack("<I", (HYPER + (i << 12)) | 0x63) for i in range(1024)))
    uc.mem_write(HYPER + 0x40000, assemble("mov eax, 0x4321\nret", HYPER + 0x40000))
    uc.mem_write(0x1000, assemble(f"call {HYPER + 0x40000:#x}\nhlt", 0x1000))
    uc.mem_write(PT_LOW, b"".join(struct.pack("<I", (i << 12) | 3) for i in range(512)))
    uc.mem_write(PD, struct.pack("<I", PT_LOW | 3))
    uc.mem_write(PD + 1023 * 4, struct.pack("<I", table | 0x23))
    events = []
    uc.hook_add(UC_HOOK_MEM_READ_PROT, lambda u, a, addr, size, v, _: events.append(addr) or False)
    uc.reg_write(X.UC_X86_REG_CR3, PD)
    uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | 0x80000001)
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    uc.emu_start(0x1000, 0, count=3)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x4321
    assert events == []


def test_the_walk_drops_accessed_bits_in_a_write_protected_directory_unseen():
    """The directory page that holds the VMM's entry is write-protected so the
    guest's stores to it are seen (runtime/paging.py).  The MMU's own store of
    an accessed bit into an entry on that page is silently dropped: the walk
    succeeds, no write-protection hook fires, and the entry's A bit stays clear
    (without the protection it is set).  So trap and bt leave the A bits of the
    current directory's entries as the guest wrote them (docs/paging-plan.md)."""
    writes = []
    uc = paged_engine(CODE, STUB)
    uc.mem_write(PD + 4, struct.pack("<I", PT_ALIAS | 3))             # A clear
    uc.hook_add(UC_HOOK_MEM_WRITE_PROT, lambda u, a, addr, size, v, _: writes.append(addr) or True)
    uc.mem_protect(PD, 0x1000, UC_PROT_READ | UC_PROT_EXEC)
    uc.emu_start(0x1000, 0, count=4)
    assert uc.mem_read(ALIAS_PHYS + 0x10, 1) == b"\x55"
    assert not struct.unpack("<I", uc.mem_read(PD + 4, 4))[0] & 0x20  # A not set
    assert writes == []
    uc = paged_engine(CODE, STUB)
    uc.mem_write(PD + 4, struct.pack("<I", PT_ALIAS | 3))
    uc.emu_start(0x1000, 0, count=4)
    assert struct.unpack("<I", uc.mem_read(PD + 4, 4))[0] & 0x20      # unprotected: the MMU sets A


def test_reg_write_of_cr3_flushes_the_tlb_even_with_the_same_value():
    """trap and bt emulate `mov cr3` with reg_write: like the instruction under
    emulate, it drops every cached translation, also when the value is unchanged."""
    read = assemble(f"mov eax, dword ptr [{ALIAS:#x}]\nhlt", 0x1000)
    uc = paged_engine(read, STUB)
    uc.mem_write(ALIAS_PHYS, struct.pack("<I", 0x11111111))
    uc.mem_write(0x3000, struct.pack("<I", 0x22222222))
    uc.emu_start(0x1000, 0, count=1)
    uc.mem_write(PT_ALIAS, struct.pack("<I", 0x3000 | 3))
    uc.reg_write(X.UC_X86_REG_CR3, PD)
    uc.emu_start(0x1000, 0, count=1)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x22222222


def _ptr_engine_with_split_ram():
    """RAM over host memory (as runtime/vm.py maps it), split by an earlier
    mem_protect, paging on with linear 0-2 MiB mapped and 2-4 MiB not."""
    from runtime.quirks import scratch_engine
    uc = scratch_engine(0x400000, esp=0x9000, host_backed=True)
    uc.mem_write(PT_LOW, b"".join(struct.pack("<I", (i << 12) | 3) for i in range(0x200)))
    uc.mem_write(PD, struct.pack("<I", PT_LOW | 3))
    # nop; nop; mov ds, [0x3000] (a selector past the GDT limit: #GP)
    uc.mem_write(0x3000, struct.pack("<H", 0x1000))
    uc.mem_write(0x1000, assemble("nop\nnop\nmov ds, word ptr [0x3000]\nhlt", 0x1000))
    uc.mem_protect(0x300000, 0x1000, UC_PROT_READ | UC_PROT_EXEC)
    uc.reg_write(X.UC_X86_REG_CR3, PD)
    uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | 0x80000001)
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    uc.emu_start(0x1000, 0, count=2)
    return uc


def test_mem_protect_under_paging_raises_a_hidden_page_fault():
    """mem_protect next to an earlier split of the RAM region makes Unicorn
    translate a neighbouring *physical* page address as a linear one; when the
    guest has not mapped it, a #PF happens that no hook sees: CR2 changes and
    the exception-in-flight state is left set, so the guest's next ordinary
    fault arrives as #DF (seen first in Linux under trap).  runtime/trap.py
    therefore restores CR2 and clears that state after every protection commit
    under paging (`before_slice`); the second half shows that this repairs it."""
    from runtime.quirks import Quirks
    for repair in (False, True):
        uc = _ptr_engine_with_split_ram()
        quirks = Quirks(uc)
        assert uc.reg_read(X.UC_X86_REG_CR2) == 0
        uc.mem_protect(0x302000, 0x1000, UC_PROT_READ | UC_PROT_EXEC)
        assert uc.reg_read(X.UC_X86_REG_CR2) == 0x301000                  # nobody asked for that walk
        if repair:
            uc.reg_write(X.UC_X86_REG_CR2, 0)
            quirks.take_fault()
        seen = []
        uc.hook_add(UC_HOOK_INTR, lambda u, intno, _: seen.append(intno) or u.emu_stop())
        uc.emu_start(0x1002, 0, count=2)
        assert seen == ([13] if repair else [8])


def test_a_refused_access_under_paging_ends_emulation_at_the_instruction():
    """As without paging, a protection hook's refusal of a read or a write
    through a present entry ends emulation with UC_ERR_READ_PROT /
    UC_ERR_WRITE_PROT, EIP at the abandoned instruction and no exception
    raised.  runtime/trap.py (`claims_error`) turns it into the not-present #PF
    emulate's guest gets there, at that EIP."""
    import ctypes
    import mmap
    from unicorn import UC_HOOK_MEM_READ_PROT, UC_HOOK_MEM_WRITE_PROT, UC_PROT_NONE
    for insn, err in (("mov eax, dword ptr [{a:#x}]", "READ_PROT"), ("mov dword ptr [{a:#x}], eax", "WRITE_PROT")):
        uc = scratch_engine(0x200000, 0x9000)
        area = mmap.mmap(-1, 0x400000)
        uc.mem_map_ptr(HYPER, 0x400000, UC_PROT_NONE, ctypes.addressof(ctypes.c_char.from_buffer(area)))
        table = 0x13000
        uc.mem_write(table, struct.pack("<I", HYPER | 0x63))
        uc.mem_write(PT_LOW, b"".join(struct.pack("<I", (i << 12) | 3) for i in range(512)))
        uc.mem_write(PD, struct.pack("<I", PT_LOW | 3))
        uc.mem_write(PD + 1023 * 4, struct.pack("<I", table | 0x23))
        uc.mem_write(0x1000, assemble("nop\n" + insn.format(a=HYPER + 0x10) + "\nhlt", 0x1000))
        refused, faults = [], []
        uc.hook_add(UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT,
                    lambda u, a, addr, size, v, _: refused.append(addr) or False)
        uc.hook_add(UC_HOOK_INTR, lambda u, intno, _: faults.append(intno) or u.emu_stop())
        uc.reg_write(X.UC_X86_REG_CR3, PD)
        uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | 0x80000001)
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        with pytest.raises(UcError, match=err):
            uc.emu_start(0x1000, 0, count=3)
        assert refused == [HYPER + 0x10] and faults == []
        assert uc.reg_read(X.UC_X86_REG_EIP) == 0x1001


def _rewrite_and_rerun(flush, pte_of_page_2: int):
    """Run the code at linear ALIAS (physical ALIAS_PHYS), rewrite it in physical
    memory, `flush`, run again: (EBX it leaves, CR2)."""
    code = assemble(f"mov eax, {ALIAS:#x}\ncall eax\nhlt", 0x1000)
    uc = paged_engine(code, STUB)
    uc.mem_write(PT_LOW + 8, struct.pack("<I", pte_of_page_2))   # linear 0x2000
    uc.mem_write(ALIAS_PHYS, assemble("mov ebx, 1\nret", ALIAS))
    uc.emu_start(0x1000, 0, count=4)
    assert uc.reg_read(X.UC_X86_REG_EBX) == 1
    uc.mem_write(ALIAS_PHYS, assemble("mov ebx, 2\nret", ALIAS))
    flush(uc)
    uc.emu_start(0x1000, 0, count=4)
    return uc.reg_read(X.UC_X86_REG_EBX), uc.reg_read(X.UC_X86_REG_CR2)


def test_remove_cache_takes_a_linear_address_under_paging():
    """`ctl_remove_cache(lo, hi)` translates `lo` through the guest's page tables
    (bt's patcher must pass the linear address the code runs at, in an address
    space that maps it): given the physical address of the code, it drops the
    blocks of whatever that address maps to linearly -- nothing when it maps
    elsewhere, and a hidden #PF (CR2 set) when it is unmapped.  Without any
    flush the old block runs; `ctl_flush_tb` always works."""
    assert _rewrite_and_rerun(lambda uc: None, 0x2003) == (1, 0)
    assert _rewrite_and_rerun(lambda uc: uc.ctl_remove_cache(ALIAS, ALIAS + 6), 0) == (2, 0)
    assert _rewrite_and_rerun(lambda uc: uc.ctl_remove_cache(ALIAS_PHYS, ALIAS_PHYS + 6), 0x5003) == (1, 0)
    assert _rewrite_and_rerun(lambda uc: uc.ctl_remove_cache(ALIAS_PHYS, ALIAS_PHYS + 6), 0) == (1, ALIAS_PHYS)
    assert _rewrite_and_rerun(lambda uc: uc.ctl_flush_tb(), 0) == (2, 0)


def test_remove_cache_sets_the_accessed_bit_of_the_page_it_translates():
    """`ctl_remove_cache(lo, hi)` walks each page of [lo, hi) as the CPU would
    (fetch) and sets the accessed bit in the PDE and PTE it passes; `hi` itself
    is not walked.  A VMM that flushes a page the guest has not touched leaves
    an A bit emulate would not (runtime/bt.py `_flush` puts it back)."""
    uc = paged_engine(CODE, STUB)
    pte = lambda i: struct.unpack("<I", uc.mem_read(PT_LOW + 4 * i, 4))[0]
    assert (pte(5), pte(6)) == (0x5003, 0x6003)
    uc.ctl_remove_cache(0x5000, 0x6000)
    assert (pte(5), pte(6)) == (0x5023, 0x6003)
    uc.ctl_flush_tb()
    assert pte(7) == 0x7003


@pytest.mark.parametrize("reload_cr3", [False, True])
def test_remove_cache_fills_the_tlb(reload_cr3):
    """The removal's walk also fills the TLB: with its A bit put back, a later
    guest load of the page hits the TLB and sets nothing -- unless the TLB is
    flushed (rewriting CR3) after the A bit is restored."""
    uc = paged_engine(assemble("mov eax, dword ptr [0x5000]\nhlt", 0x1000), STUB)
    uc.ctl_remove_cache(0x5000, 0x6000)
    uc.mem_write(PT_LOW + 4 * 5, struct.pack("<I", 0x5003))
    if reload_cr3:
        uc.reg_write(X.UC_X86_REG_CR3, uc.reg_read(X.UC_X86_REG_CR3))
    uc.emu_start(0x1000, 0, count=1)
    assert struct.unpack("<I", uc.mem_read(PT_LOW + 4 * 5, 4))[0] == (0x5023 if reload_cr3 else 0x5003)
