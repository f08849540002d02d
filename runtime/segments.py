"""The CPU's segment-register load and far-jump checks, at the guest's own CPL.

Ring compression runs the guest kernel at CPL 1 with its DPL-0 descriptors
raised to DPL 1 in the shadow GDT (runtime/trap.py).  For most selectors the
real CPU's checks then give the guest's answer, but not when the guest names a
kernel descriptor with RPL 1 (issue 15, cause 6): at CPL 1 RPL 1 is legal, at
CPL 0 against a DPL-0 descriptor it is not.  So the segment-load and far-jump
stubs (patcher/templates.py) exit when the selector's RPL is 1, and the SS
loads always reach the VMM; the routines (runtime/emulation.py) and
`TrapMode.load_ss` then decide here what the CPU at the guest's CPL does.

The order of the checks is QEMU's (helper_load_seg, helper_ljmp_protected),
which is Unicorn's under emulate, the reference: null, table limit, system
descriptor, type, privilege, present.  The descriptor is the guest's own
(Delivery.descriptor); LDT selectors are refused there with #GP as everywhere
in the VMM (no LDT is modelled).
"""
from __future__ import annotations

from bt.x86 import (DESC_CODE, DESC_CONFORMING, DESC_RW, DESC_S, DESC_TYPE_MASK, GP, NP, SS as SS_FAULT,
                    SYS_TASK_GATE, SYS_TSS16_AVAILABLE, SYS_TSS16_BUSY, SYS_TSS32_AVAILABLE, SYS_TSS32_BUSY)
from runtime.delivery import Descriptor, GuestFault

SEL_RPL = 3
TASK_TYPES = frozenset({SYS_TASK_GATE, SYS_TSS16_AVAILABLE, SYS_TSS16_BUSY, SYS_TSS32_AVAILABLE, SYS_TSS32_BUSY})


def _descriptor(mode, sel: int) -> Descriptor:
    return mode.vm.delivery.descriptor(sel)          # #GP(sel) past the limit or in the LDT


def _null(sel: int) -> bool:
    return sel & 0xFFFC == 0


def check_data_segment(mode, sel: int) -> None:
    """Raise the GuestFault the CPU raises when DS/ES/FS/GS is loaded with `sel`
    at the guest's CPL; return when the load succeeds (a null selector loads)."""
    if _null(sel):
        return
    desc = _descriptor(mode, sel)
    err = sel & 0xFFFC
    if not desc.access & DESC_S:
        raise GuestFault(GP, err)
    code = desc.access & DESC_CODE
    if code and not desc.access & DESC_RW:                      # execute-only code
        raise GuestFault(GP, err)
    if not (code and desc.access & DESC_CONFORMING):
        if desc.dpl < mode.guest_cpl() or desc.dpl < sel & SEL_RPL:
            raise GuestFault(GP, err)
    if not desc.present:
        raise GuestFault(NP, err)


def check_stack_segment(mode, sel: int) -> None:
    """The same for SS: RPL and DPL must equal the CPL, a writable data segment."""
    if _null(sel):
        raise GuestFault(GP, 0)
    desc = _descriptor(mode, sel)
    err = sel & 0xFFFC
    cpl = mode.guest_cpl()
    if not desc.access & DESC_S or sel & SEL_RPL != cpl or desc.dpl != cpl:
        raise GuestFault(GP, err)
    if desc.access & DESC_CODE or not desc.access & DESC_RW:
        raise GuestFault(GP, err)
    if not desc.present:
        raise GuestFault(SS_FAULT, err)


def far_code_segment(mode, sel: int, offset: int) -> Descriptor | None:
    """The code segment a far jmp/call to `sel:offset` enters at the guest's CPL,
    or the GuestFault the CPU raises; None for a system descriptor (call gate,
    task gate, TSS), which no routine models."""
    if _null(sel):
        raise GuestFault(GP, 0)
    desc = _descriptor(mode, sel)
    err = sel & 0xFFFC
    if not desc.access & DESC_S:
        return None
    cpl = mode.guest_cpl()
    if not desc.access & DESC_CODE:
        raise GuestFault(GP, err)
    if desc.access & DESC_CONFORMING:
        if desc.dpl > cpl:
            raise GuestFault(GP, err)
    elif sel & SEL_RPL > cpl or desc.dpl != cpl:
        raise GuestFault(GP, err)
    if not desc.present:
        raise GuestFault(NP, err)
    if offset > desc.limit:
        raise GuestFault(GP, 0)
    return desc


def names_task(mode, sel: int) -> bool:
    """Does `sel` name a TSS or a task gate in the guest's GDT (a far jmp/call
    to it is a task switch)?  False for anything the descriptor read refuses."""
    if _null(sel):
        return False
    try:
        desc = _descriptor(mode, sel)
    except GuestFault:
        return False
    return not desc.access & DESC_S and desc.access & DESC_TYPE_MASK in TASK_TYPES


def code_selector(mode, sel: int) -> int:
    """The real CS after a far transfer to `sel` at the same privilege: the
    CPU replaces the RPL by the CPL; ring compression runs guest ring 0 in 1."""
    cpl = mode.guest_cpl()
    return mode.real_selector((sel & ~SEL_RPL) | cpl, cpl)
