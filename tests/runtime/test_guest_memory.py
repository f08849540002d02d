"""runtime/memory.py: the VMM's own walk of the guest's page tables gives the
answer Unicorn's MMU gives the guest - the same physical byte, or a page fault
with the same CR2 and error code (read as the VMM reads them: CR2 from the
register, the error code through runtime/quirks.py).  The paging plan (docs/paging-plan.md) has
trap and bt read and write guest memory through this walk, so it must agree
with the CPU on every combination of present/writable/user bits, 4 KiB and
4 MiB pages (with PSE-36 address bits and the reserved bit 21), CR4.PSE and
CR0.WP, for the kernel's accesses (CPL 0) and user mode's (CPL 3, entered
with an iretd).  The native walk (runtime/_walk.c, what a VM uses) is checked
against the same answers: it must give the Python walk's result exactly."""
import struct

import pytest

from hypothesis import given, settings, strategies as st
from unicorn import UcError, UC_HOOK_INTR
from unicorn import x86_const as X

from conftest import assemble
from runtime._walk import walk
from runtime.memory import GuestMemory, PageFault
from runtime.quirks import Quirks, scratch_engine

RAM = 4 << 20
CODE, STACK = 0x1000, 0x9000
PD, PT_IDENTITY, PT_FIRST = 0x300000, 0x301000, 0x302000
DATA_LO, DATA_HI = 0x100000, 0x200000          # every mapping under test lands here
N_DIRS = 7                                     # PDEs 1..7: linear 4 MiB - 32 MiB

USER_CODE = CODE + 0x100
LOAD, STORE = "mov eax, dword ptr [esi]\nhlt", "mov dword ptr [esi], ebx\nhlt"
# To CPL 3: iretd with SS 0x23, ESP, EFLAGS, CS 0x1b, EIP (bt.machine's flat GDT).
TO_USER = assemble(f"push 0x23\npush {STACK - 0x1000:#x}\npush 2\npush 0x1b\npush {USER_CODE:#x}\niretd",
                   CODE)
PATTERN = b"".join(struct.pack("<I", a) for a in range(DATA_LO, DATA_HI, 4))


def assert_native_agrees(uc, linear, access, expect, fault):
    """The native walk over the engine's RAM and registers gives the Python walk's answer."""
    r = walk(bytes(uc.mem_read(0, RAM)), uc.reg_read(X.UC_X86_REG_CR0), uc.reg_read(X.UC_X86_REG_CR3),
             uc.reg_read(X.UC_X86_REG_CR4), uc.msr_read(0xC0000080), linear, access)
    assert r == (expect if fault is None else -fault.error_code - 1), f"native walk: {r:#x}"


def machine(pdes, pte, linear, pse, wp, access, high=0, user=False):
    """pdes: flags of PDEs 1..7, each pointing at its own page table, except that
    with CR4.PSE a PS entry maps 4 MiB at physical 0 plus `high` (PSE-36 address
    bits 20:13 and the reserved bit 21 under test)."""
    uc = scratch_engine(RAM, STACK)
    if user:       # the access runs at CPL 3 (hlt there then raises #GP: the end)
        uc.mem_write(CODE, TO_USER)
        uc.mem_write(USER_CODE, assemble(access, USER_CODE))
    else:
        uc.mem_write(CODE, assemble(access, CODE))
    uc.mem_write(DATA_LO, PATTERN)
    low = 7 if user else 3                        # user code and stack need U
    uc.mem_write(PT_IDENTITY, b"".join(struct.pack("<I", (i << 12) | low) for i in range(1024)))
    uc.mem_write(PD, struct.pack("<I", PT_IDENTITY | low))
    for i, flags in enumerate(pdes, start=1):
        base = high if flags & 0x80 and pse else PT_FIRST + (i - 1) * 0x1000
        uc.mem_write(PD + 4 * i, struct.pack("<I", base | flags))
    d = linear >> 22
    uc.mem_write(PT_FIRST + (d - 1) * 0x1000 + ((linear >> 12) & 0x3FF) * 4, struct.pack("<I", pte))
    uc.reg_write(X.UC_X86_REG_CR3, PD)
    uc.reg_write(X.UC_X86_REG_CR4, 0x10 if pse else 0)
    uc.reg_write(X.UC_X86_REG_CR0, 0x80000011 | (0x10000 if wp else 0))
    uc.reg_write(X.UC_X86_REG_ESI, linear)
    uc.reg_write(X.UC_X86_REG_EBX, 0xC0FFEE00)
    uc.ctl_exits_enabled(True)            # no `until` probe once paging is on
    uc.ctl_set_exits([])
    return uc


# P (present three times in four, so most walks get past it), then W, U, PS.
present = st.sampled_from([1, 1, 1, 0])
flags = st.builds(lambda p, rest: p | rest, present, st.sets(st.sampled_from([2, 4, 0x80])).map(sum))


@pytest.mark.parametrize("user", [False, True])
@pytest.mark.parametrize("pse", [False, True])
@pytest.mark.parametrize("wp", [False, True])
@pytest.mark.parametrize("write", [False, True])
@settings(max_examples=40, deadline=None)
@given(pdes=st.lists(flags, min_size=N_DIRS, max_size=N_DIRS),
       pte_flags=st.builds(lambda p, rest: p | rest, present, st.sets(st.sampled_from([2, 4])).map(sum)),
       frame=st.integers(DATA_LO >> 12, (DATA_HI >> 12) - 1),
       directory=st.integers(1, N_DIRS), offset=st.integers(DATA_LO // 4, DATA_HI // 4 - 1),
       high=st.sampled_from([0, 0, 0, 1 << 21, 1 << 13, 0x80 << 13]))
def test_the_vmm_walk_agrees_with_unicorns_mmu(pdes, pte_flags, frame, directory, offset, pse, wp, write,
                                                high, user):
    linear = (directory << 22) | (offset * 4)
    pte = (frame << 12) | pte_flags
    uc = machine(pdes, pte, linear, pse, wp, STORE if write else LOAD, high, user)
    try:
        expect = GuestMemory(uc, RAM).translate(linear, write=write, user=user)
        fault = None
    except PageFault as pf:
        expect, fault = None, pf
    assert_native_agrees(uc, linear, (2 if write else 0) | (4 if user else 0), expect, fault)
    quirks, faults = Quirks(uc), []

    def on_intr(uc, intno, _):
        faults.append((intno, uc.reg_read(X.UC_X86_REG_CR2), quirks.take_fault()[0]))
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    steps = 10 if user else 2
    if fault is None and expect >= 1 << 32:       # a PSE-36 page above 4 GiB: no memory there
        with pytest.raises(UcError, match="UNMAPPED"):
            uc.emu_start(CODE, 0, count=steps)
        return
    uc.emu_start(CODE, 0, count=steps)
    faulted = any(n == 14 for n, _cr2, _e in faults)
    assert not user or faults, "the access at CPL 3 neither faulted nor reached the hlt"
    if fault is not None:
        assert faulted, f"the walk says #PF {fault.error_code:#x}; the CPU accessed memory"
        assert faults == [(14, linear, fault.error_code)]
        return
    assert not faulted, f"the walk says {expect:#x}; the CPU faulted"
    assert DATA_LO <= expect < DATA_HI
    if write:
        assert struct.unpack("<I", uc.mem_read(expect, 4))[0] == 0xC0FFEE00
    else:
        assert uc.reg_read(X.UC_X86_REG_EAX) == expect      # the pattern: each dword holds its address


# -- PAE ---------------------------------------------------------------------------
# PDPT entry 0 maps linear 0-1 GiB through one directory whose entry 0 identity-
# maps the first 2 MiB (code, stack, data); PDPT entry 1 (linear 1-2 GiB) is
# the walk under test: its directory's entry 0 is a 2 MiB page at physical 0
# (PS) or points at a table whose one entry maps a page of DATA.
PDPT, PAE_PD0, PAE_PT0, PAE_PD1, PAE_PT1 = 0x300000, 0x301000, 0x302000, 0x303000, 0x304000
PAE_LINEAR = 0x40000000
FETCH = "call esi\nhlt"
HLT_PAGE = b"\xf4" * 0x1000


def pae_machine(pdpte, pde, pte, offset, nxe, wp, access, user):
    uc = scratch_engine(RAM, STACK)
    if user:
        uc.mem_write(CODE, TO_USER)
        uc.mem_write(USER_CODE, assemble(access, USER_CODE))
    else:
        uc.mem_write(CODE, assemble(access, CODE))
    uc.mem_write(DATA_LO, HLT_PAGE * 256 if access == FETCH else PATTERN)
    low = 7 if user else 3
    uc.mem_write(PDPT, struct.pack("<QQ", PAE_PD0 | 1, pdpte))
    uc.mem_write(PAE_PD0, struct.pack("<Q", PAE_PT0 | low))
    uc.mem_write(PAE_PT0, b"".join(struct.pack("<Q", (i << 12) | low) for i in range(512)))
    uc.mem_write(PAE_PD1, struct.pack("<Q", pde))
    uc.mem_write(PAE_PT1 + ((offset >> 12) & 0x1FF) * 8, struct.pack("<Q", pte))
    if nxe:
        uc.msr_write(0xC0000080, uc.msr_read(0xC0000080) | 0x800)
    uc.reg_write(X.UC_X86_REG_CR3, PDPT)
    uc.reg_write(X.UC_X86_REG_CR4, 0x20)
    uc.reg_write(X.UC_X86_REG_CR0, 0x80000011 | (0x10000 if wp else 0))
    uc.reg_write(X.UC_X86_REG_ESI, PAE_LINEAR + offset)
    uc.reg_write(X.UC_X86_REG_EBX, 0xC0FFEE00)
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    return uc


pae_rsvd = st.sampled_from([0, 0, 0, 0, 1 << 40, 1 << 52, 1 << 62])
pae_nx = st.sampled_from([0, 0, 1 << 63])


@pytest.mark.parametrize("user", [False, True])
@pytest.mark.parametrize("nxe", [False, True])
@pytest.mark.parametrize("access", ["load", "store", "fetch"])
@settings(max_examples=40, deadline=None)
@given(pdpte_p=present, pdpte_extra=st.sampled_from([0, 0, 0, 6, 1 << 40, 1 << 63]),
       pde_flags=flags, pde_nx=pae_nx, pde_rsvd=pae_rsvd, large_rsvd=st.sampled_from([0, 0, 0, 1 << 13, 1 << 20]),
       pte_flags=st.builds(lambda p, rest: p | rest, present, st.sets(st.sampled_from([2, 4])).map(sum)),
       pte_nx=pae_nx, pte_rsvd=pae_rsvd, frame=st.integers(DATA_LO >> 12, (DATA_HI >> 12) - 1),
       offset=st.integers(DATA_LO // 4, DATA_HI // 4 - 1), wp=st.booleans())
def test_the_vmm_pae_walk_agrees_with_unicorns_mmu(pdpte_p, pdpte_extra, pde_flags, pde_nx, pde_rsvd, large_rsvd,
                                                    pte_flags, pte_nx, pte_rsvd, frame, offset, wp, access, nxe,
                                                    user):
    offset *= 4
    large = pde_flags & 0x80
    pde = (0 | large_rsvd if large else PAE_PT1) | pde_flags | pde_nx | pde_rsvd
    pte = (frame << 12) | pte_flags | pte_nx | pte_rsvd
    src = {"load": LOAD, "store": STORE, "fetch": FETCH}[access]
    uc = pae_machine(PAE_PD1 | pdpte_p | pdpte_extra, pde, pte, offset, nxe, wp, src, user)
    linear = PAE_LINEAR + offset
    try:
        expect = GuestMemory(uc, RAM).translate(linear, write=access == "store", user=user,
                                                fetch=access == "fetch")
        fault = None
    except PageFault as pf:
        expect, fault = None, pf
    assert_native_agrees(uc, linear, {"load": 0, "store": 2, "fetch": 16}[access] | (4 if user else 0),
                         expect, fault)
    quirks, faults = Quirks(uc), []

    def on_intr(uc, intno, _):
        faults.append((intno, uc.reg_read(X.UC_X86_REG_CR2), quirks.take_fault()[0]))
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(CODE, 0, count=10 if user else 3)
    page_faults = [f for f in faults if f[0] == 14]
    if fault is not None:
        assert page_faults == [(14, linear, fault.error_code)], f"walk: #PF {fault.error_code:#x}"
        return
    assert not page_faults, f"the walk says {expect:#x}; the CPU faulted"
    assert DATA_LO <= expect < DATA_HI
    if access == "store":
        assert struct.unpack("<I", uc.mem_read(expect, 4))[0] == 0xC0FFEE00
    elif access == "load":
        assert uc.reg_read(X.UC_X86_REG_EAX) == expect
    else:
        assert uc.reg_read(X.UC_X86_REG_EIP) in (linear, linear + 1)     # reached the hlt there
