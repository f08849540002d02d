"""The clock's remembered page walks (runtime/_clock.c, "Walks remembered per
block"): with paging on, a block known unchanged is not walked again while the
registers and page-table entries its last walk read still hold -- and is when
the guest remaps its page (a PTE store and invlpg) or switches CR3."""
from __future__ import annotations

import ctypes
import mmap
import struct

from keystone import Ks, KS_ARCH_X86, KS_MODE_32
from unicorn import Uc, UC_ARCH_X86, UC_MODE_32, UC_HOOK_CODE
from unicorn import x86_const as X

from runtime.clock import InstructionClock
from runtime.quirks import Quirks

RAM = 0x400000
CODE = 0x1000
PD1, PT1, PD2, PT2 = 0x10000, 0x11000, 0x12000, 0x13000
SUB = 0x300000                        # the linear page the guest remaps
PAGE_A, PAGE_B, PAGE_C = 0x200000, 0x201000, 0x202000

# Three routines of the same size (5 bytes) at the same linear address, with
# 5, 3 and 2 instructions: the clock's entry (address, size) is the same, so
# only the bytes it finds through the current mapping give the right count.
ROUTINES = {
    PAGE_A: bytes.fromhex("90909090c3"),        # nop x4; ret
    PAGE_B: bytes.fromhex("83c00190c3"),        # add eax, 1; nop; ret
    PAGE_C: bytes.fromhex("8d444001c3"),        # lea eax, [eax+eax*2+1]; ret
}

GUEST = f"""
    mov ecx, 40
a:  call {SUB:#x}
    dec ecx
    jnz a
    mov dword ptr [{PT1 + (SUB >> 12) * 4:#x}], {PAGE_B | 3:#x}
    invlpg [{SUB:#x}]
    mov ecx, 40
b:  call {SUB:#x}
    dec ecx
    jnz b
    mov ebx, {PD2:#x}
    mov cr3, ebx
    mov ecx, 40
c:  call {SUB:#x}
    dec ecx
    jnz c
    mov ebx, {PD1:#x}
    mov cr3, ebx
    mov ecx, 40
d:  call {SUB:#x}
    dec ecx
    jnz d
    hlt
"""


def machine(sub_pages: tuple[int, int] = (PAGE_A, PAGE_C)):
    """A paging engine: two directories, identity maps except SUB, which PD1
    maps to sub_pages[0] and PD2 to sub_pages[1]."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    ram = mmap.mmap(-1, RAM)
    ptr = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    uc.mem_map_ptr(0, RAM, 7, ptr)
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(GUEST, CODE)[0])
    uc.mem_write(CODE, code)
    for pa, routine in ROUTINES.items():
        uc.mem_write(pa, routine)
    for pd, pt, sub in ((PD1, PT1, sub_pages[0]), (PD2, PT2, sub_pages[1])):
        uc.mem_write(pd, struct.pack("<I", pt | 3))
        table = [(i << 12) | 3 for i in range(1024)]
        table[SUB >> 12] = sub | 3
        uc.mem_write(pt, struct.pack("<1024I", *table))
    uc.reg_write(X.UC_X86_REG_ESP, 0x9000)
    uc.reg_write(X.UC_X86_REG_CR3, PD1)
    uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | 0x80000001)
    return uc, ram, ptr


def exact_count() -> tuple[int, int]:
    """Instructions and final EAX by a Python code hook on every instruction."""
    uc, ram, _ = machine()
    n = [0]
    uc.hook_add(UC_HOOK_CODE, lambda *a: n.__setitem__(0, n[0] + 1))
    uc.emu_start(CODE, 0)
    return n[0], uc.reg_read(X.UC_X86_REG_EAX)


def clocked():
    """The instruction clock configured as the VM does under emulate."""
    uc, ram, ptr = machine()
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    clock = InstructionClock(uc)
    clock.set_memory([(0, RAM, ptr)])
    q = Quirks(uc)
    clock.set_cpu_state(q.env, *q.off.cr, q.off.efer)
    assert clock.enable_fast_stores(RAM, q.off.hflags) == ""
    assert clock.generation_problem == ""
    clock.run(CODE, 10**6, lambda: False)
    return uc, clock, ram


def test_remapped_and_switched_pages_are_counted_from_their_own_bytes():
    n, eax = exact_count()
    # 40 calls of each routine: A (5 instructions), B (3), C (2), B again (3),
    # each call with call/dec/jnz, plus the setup between the loops
    assert n == 1 + 40 * (5 + 3) + 3 + 40 * (3 + 3) + 3 + 40 * (2 + 3) + 3 + 40 * (3 + 3) + 1
    uc, clock, _ = clocked()
    assert clock.count == n
    assert uc.reg_read(X.UC_X86_REG_EAX) == eax
    st = clock.stats()
    # the same (address, size) entry was decoded again for B, C and B
    assert st["changed_blocks"] >= 3
    # repeated executions of each mapping skipped the walk
    assert st["walks_remembered"] >= 4 * 30
    # every physical page a block ran on became a fast-stores code page, the
    # remapped ones too: an entry's code-page mark (Entry.fs_epoch) is for the
    # page it was compared at, and a new page is marked again
    assert st["store_code_pages"] == 4          # CODE, PAGE_A, PAGE_B, PAGE_C


def test_a_walk_is_remembered_only_while_its_page_table_entries_hold():
    """Without the remap and the switch nothing but A runs: the walk is made
    for the first executions only."""
    uc, ram, ptr = machine()
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(
        f"mov ecx, 100\na: call {SUB:#x}\ndec ecx\njnz a\nhlt", CODE)[0])
    uc.mem_write(CODE, code)
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    clock = InstructionClock(uc)
    clock.set_memory([(0, RAM, ptr)])
    q = Quirks(uc)
    clock.set_cpu_state(q.env, *q.off.cr, q.off.efer)
    assert clock.enable_fast_stores(RAM, q.off.hflags) == ""
    clock.run(CODE, 10**6, lambda: False)
    assert clock.count == 1 + 100 * (5 + 3) + 1
    st = clock.stats()
    assert st["changed_blocks"] == 0
    # three blocks run 100 times each (the call, the routine, dec/jnz); all
    # but the first few executions of each know their walk
    assert st["walks_remembered"] >= 3 * 95


def test_a_quick_copy_is_void_once_its_entry_is_compared_under_paging():
    """The clock's quick path (paging off) keeps a copy of an entry's fields.
    Here the block at SUB runs with paging off (copied), then with paging on
    through a mapping to other bytes of the same size (the same entry, decoded
    again, at the same translation generation), then with paging off again
    with the slice's budget inside it: the stop is at the instruction of SUB's
    own bytes, and the entry is decoded from them again -- without the void
    the quick copy answers and the entry the slice ends in keeps PAGE_B's
    decode (seen here as one comparison too few)."""
    guest = f"""
        mov ecx, 3
    a:  call {SUB:#x}
        dec ecx
        jnz a
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        call {SUB:#x}
        mov eax, cr0
        and eax, 0x7fffffff
        mov cr0, eax
        call {SUB:#x}
        hlt
    """

    def engine():
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        ram = mmap.mmap(-1, RAM)
        ptr = ctypes.addressof(ctypes.c_char.from_buffer(ram))
        uc.mem_map_ptr(0, RAM, 7, ptr)
        uc.mem_write(CODE, bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(guest, CODE)[0]))
        uc.mem_write(SUB, ROUTINES[PAGE_A])             # 5 instructions, paging off
        uc.mem_write(PAGE_B, ROUTINES[PAGE_B])          # 3 instructions, paging on
        uc.mem_write(PD1, struct.pack("<I", PT1 | 3))
        table = [(i << 12) | 3 for i in range(1024)]
        table[SUB >> 12] = PAGE_B | 3
        uc.mem_write(PT1, struct.pack("<1024I", *table))
        uc.reg_write(X.UC_X86_REG_ESP, 0x9000)
        uc.reg_write(X.UC_X86_REG_CR3, PD1)
        return uc, ram, ptr

    # the whole run by a Python code hook: instructions, and where SUB's last call starts
    uc, ram, _ = engine()
    trace = []
    uc.hook_add(UC_HOOK_CODE, lambda u, addr, size, _: trace.append(addr))
    uc.emu_start(CODE, 0)
    last = max(i for i, a in enumerate(trace) if a == SUB)
    assert trace[last:last + 5] == [SUB, SUB + 1, SUB + 2, SUB + 3, SUB + 4]
    budget = last + 2                           # two of the last call's nops start

    uc, ram, ptr = engine()
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    clock = InstructionClock(uc)
    clock.set_memory([(0, RAM, ptr)])
    q = Quirks(uc)
    clock.set_cpu_state(q.env, *q.off.cr, q.off.efer)
    assert clock.enable_fast_stores(RAM, q.off.hflags) == ""
    assert clock.generation_problem == ""
    clock.run(CODE, budget, lambda: False)
    assert clock.count == budget
    assert uc.reg_read(X.UC_X86_REG_EIP) == trace[budget] == SUB + 2
    assert clock.stats()["changed_blocks"] == 2          # SUB decoded again under paging, and back



def test_a_cr4_change_is_counted_from_the_new_mapping():
    """CR4.PSE turned on makes the same page-directory entry (PS set) map a
    4 MiB page: SUB then runs its identity-mapped bytes (3 instructions, not
    PAGE_A's 5) though no page-table entry changed.  A remembered walk holds
    only under the CR4 it was made with (memo_holds); the count must follow
    the new mapping.  (Removing that one comparison does not fail this test:
    the first call after the switch is not answered from the memo for
    another reason, so this pins the outcome, not that line.)"""
    guest = f"""
        mov ecx, 40
    a:  call {SUB:#x}
        dec ecx
        jnz a
        mov eax, cr4
        or eax, 0x10
        mov cr4, eax
        xor eax, eax
        mov ecx, 40
    b:  call {SUB:#x}
        dec ecx
        jnz b
        hlt
    """

    def engine():
        uc, ram, ptr = machine()
        uc.mem_write(CODE, bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(guest, CODE)[0]))
        # the page table at physical 0: a 4 MiB PDE's bits 13-20 are PSE-36's
        # address bits 32-39 (PT1's bit 16 would map the page above 4 GiB)
        table = [(i << 12) | 3 for i in range(1024)]
        table[SUB >> 12] = PAGE_A | 3
        uc.mem_write(0, struct.pack("<1024I", *table))
        uc.mem_write(PD1, struct.pack("<I", 0x83))             # PS: ignored while CR4.PSE is 0
        uc.mem_write(SUB, ROUTINES[PAGE_B])                    # what SUB maps to under PSE
        return uc, ram, ptr

    uc, ram, _ = engine()
    n = [0]
    uc.hook_add(UC_HOOK_CODE, lambda *a: n.__setitem__(0, n[0] + 1))
    uc.emu_start(CODE, 0)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 40                 # PAGE_B's routine ran after the switch
    assert n[0] == 1 + 40 * (5 + 3) + 5 + 40 * (3 + 3) + 1

    uc, ram, ptr = engine()
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    clock = InstructionClock(uc)
    clock.set_memory([(0, RAM, ptr)])
    q = Quirks(uc)
    clock.set_cpu_state(q.env, *q.off.cr, q.off.efer)
    assert clock.enable_fast_stores(RAM, q.off.hflags) == ""
    clock.run(CODE, 10**6, lambda: False)
    assert clock.count == n[0]
    st = clock.stats()
    assert st["changed_blocks"] >= 1                            # SUB's entry decoded again
    assert st["walks_remembered"] >= 2 * 30
    assert uc.reg_read(X.UC_X86_REG_EAX) == 40
