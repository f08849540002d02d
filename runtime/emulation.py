"""Emulation routines for instructions that fault because the guest kernel runs
in ring 1 (trap-and-emulate), and for the sensitive-but-unprivileged ones bt
routes to the VMM.  One routine per catalog row, registered with
`@emulates(row_name)` (bt/catalog.py); the exit dispatcher (runtime/trap.py)
classifies the faulting instruction's bytes and calls `emulate(mode, row, ...)`.
Which rows have a routine is declared in the catalog (`emulation`) and checked
against this registry at import time.

A routine gets (mode, insn, eip) and either
  * returns the EIP to resume at (None = the next instruction),
  * returns NOT_MINE when this fault is not one deprivileging caused (the
    dispatcher then reflects it to the guest as the genuine fault it is), or
  * raises GuestFault for a fault the guest must see instead.
A routine that changed something that needs the run loop's attention (hlt, an
interrupt that became deliverable, a device asking to stop) sets mode.stop_slice.
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Callable

from unicorn import x86_const as X

from bt.catalog import SHADOW_OPENERS, check_registry
from bt.hyper_layout import VFLAGS_MASK
from bt.x86 import (NP, EFER, EFER_NXE, MSR_CSTAR, MSR_LSTAR, MSR_SFMASK, MSR_STAR, MSR_SYSENTER_CS,
                    MSR_SYSENTER_EIP, MSR_SYSENTER_ESP, MSR_TSC, CR0_EM, CR0_MP, CR0_MSW_BITS, CR0_PE, CR0_TS, CR4_TSD, DESC_CODE, DESC_CONFORMING, DESC_RW,
                    DESC_S, DESC_SIZE, DESC_TYPE_MASK, DR6_FIXED_ONE, DR7_FIXED_ONE, EFLAGS_FIXED_ONE, GP, IF_BIT, IOPL_MASK, IOPL_SHIFT, NT_BIT, RF_BIT, SEL_INDEX_MASK, SEL_TI,
                    SYS_CALL_GATE16, SYS_CALL_GATE32, SYS_LDT, SYS_TASK_GATE, SYS_TSS16_AVAILABLE, SYS_TSS16_BUSY,
                    SYS_TSS32_AVAILABLE, SYS_TSS32_BUSY, VIF_BIT, VIP_BIT, VM_BIT, ZF_BIT)
from runtime import cpuid as cpuid_model
from runtime.devices.regs import MSR_APIC_BASE
from runtime import segments, v86
from runtime.decode import effective_address
from runtime.delivery import GuestFault
from runtime.taskswitch import CALL as CALL_TASK, JMP as JMP_TASK

NOT_MINE = object()

ROUTINES: dict[str, Callable] = {}


def emulates(*rows: str):
    def register(fn):
        for m in rows:
            if m in ROUTINES:
                raise ValueError(f"two emulation routines for {m}")
            ROUTINES[m] = fn
        return fn
    return register


def emulate(mode, row, insn, eip):
    """Run the routine of catalog row `row` (a CatalogEntry or None) for the decoded
    `insn` at `eip`: the resume EIP, None (next instruction) or NOT_MINE; raises
    GuestFault.  A row without a routine is NOT_MINE."""
    routine = ROUTINES.get(row.name) if row is not None else None
    if routine is None:
        return NOT_MINE
    return routine(mode, insn, eip)


def has_routine(row) -> bool:
    return row is not None and row.name in ROUTINES


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def read_operand(mode, op) -> int:
    uc = mode.uc
    if op.kind in ("reg", "seg"):
        return mode.vm.fast.reg_read(op.reg) & _mask(op.size)
    if op.kind == "imm":
        return op.imm & _mask(op.size)
    if op.kind == "mem":
        addr = effective_address(uc, op, mode.seg_base)
        return int.from_bytes(mode.guest_read(addr, op.size), "little")
    raise ValueError(op.kind)


def write_operand(mode, op, value: int) -> None:
    uc = mode.uc
    if op.kind == "reg":
        mode.vm.fast.reg_write(op.reg, value & _mask(op.size))
    elif op.kind == "mem":
        addr = effective_address(uc, op, mode.seg_base)
        mode.guest_write(addr, (value & _mask(op.size)).to_bytes(op.size, "little"))
    else:
        raise ValueError(op.kind)


# -- halting ------------------------------------------------------------------
# cli and sti have no routine: the guest kernel runs at CPL 1 with the real
# IOPL 1 and its IF in the real EFLAGS, so they run natively (docs/fidelity.md,
# "IF in the real EFLAGS"); at CPL 3 their #GP is the guest's own.


@emulates("hlt")
def _hlt(mode, insn, eip):
    mode.vm.on_hlt()
    mode.stop_slice = True


# Port I/O never reaches this table: Unicorn 2.1 does not apply the IOPL/TSS
# I/O-permission check, and its UC_HOOK_INSN in/out hooks (string forms included)
# fire at every CPL, so every port access exits into the VMM through that one
# cheap, counted path in all modes (tests/runtime/test_unicorn_facts.py).


# -- control and debug registers, segment loads --------------------------------------
@emulates("mov_to_cr")
def _mov_to_cr(mode, insn, eip):
    dst, src = insn.operands
    value = read_operand(mode, src)
    if dst.reg == 4 and not cpuid_model.cr4_allowed(value):
        raise GuestFault(GP, 0)             # a CR4 bit the model lacks (runtime/cpuid.py)
    mode.write_cr(dst.reg, value)


@emulates("mov_from_cr")
def _mov_from_cr(mode, insn, eip):
    dst, src = insn.operands
    write_operand(mode, dst, mode.read_cr(src.reg))


@emulates("mov_to_dr")
def _mov_to_dr(mode, insn, eip):
    dst, src = insn.operands
    drs = list(mode.vcpu.get("dr"))
    drs[dst.reg] = read_operand(mode, src) | {6: DR6_FIXED_ONE, 7: DR7_FIXED_ONE}.get(dst.reg, 0)
    mode.vcpu.set("dr", *drs)
    breakpoints = getattr(mode, "breakpoints", None)    # trap and bt (runtime/breakpoints.py)
    if breakpoints is not None and dst.reg in (0, 1, 2, 3, 7):
        breakpoints.update(drs)


@emulates("mov_from_dr")
def _mov_from_dr(mode, insn, eip):
    dst, src = insn.operands
    write_operand(mode, dst, mode.vcpu.get("dr")[src.reg])


def settle_irq_shadow(quirks, row) -> None:
    """After the VMM emulated one instruction of `row`: the shadow it ran in (if
    any) is over, and an SS load outside a shadow opens one for the next
    instruction, as the CPU's own load does."""
    opens = row is not None and row.name in SHADOW_OPENERS and not quirks.irq_inhibited()
    quirks.end_irq_shadow()
    if opens:
        quirks.open_irq_shadow()


@emulates("mov_to_ss")
def _mov_to_ss(mode, insn, eip):
    return mode.load_ss(read_operand(mode, insn.operands[1]) & 0xFFFF)


@emulates("mov_to_sreg")
def _mov_to_sreg(mode, insn, eip):
    # bt's stub exits here only for an RPL-1 selector (patcher/templates.py);
    # trap reaches it when the load faulted natively.
    dst, src = insn.operands
    _load_data_segment(mode, dst.reg, read_operand(mode, src) & 0xFFFF)


@emulates("pop_sreg")
def _pop_sreg(mode, insn, eip):
    esp = mode.uc.reg_read(X.UC_X86_REG_ESP)
    sel = int.from_bytes(mode.guest_read(mode.stack_base() + esp, 2), "little")
    _load_data_segment(mode, insn.operands[0].reg, sel)
    mode.uc.reg_write(X.UC_X86_REG_ESP, (esp + (2 if insn.opsize16 else 4)) & 0xFFFFFFFF)


def _load_data_segment(mode, reg: int, sel: int) -> None:
    """Load DS/ES/FS/GS as the CPU at the guest's CPL does.  A selector the guest
    may load, the real CPU at CPL 1 loads too (only RPL 1 on a DPL-0 descriptor
    differs, and that one faults here first), so reg_write can do the load and
    the CPU sets the descriptor's accessed bit (runtime/trap.py copies it)."""
    segments.check_data_segment(mode, sel)
    mode.uc.reg_write(reg, sel)


@emulates("mov_from_cs", "mov_from_ss")
def _mov_from_seg(mode, insn, eip):
    # mov r/m, cs|ss: the guest sees its own RPL, not ring compression's
    dst, src = insn.operands
    value = mode.guest_selector(mode.uc.reg_read(src.reg))
    if dst.kind == "mem":
        write_operand(mode, dataclasses.replace(dst, size=2), value)
    else:
        write_operand(mode, dst, value)


@emulates("pop_ss")
def _pop_ss(mode, insn, eip):
    esp = mode.uc.reg_read(X.UC_X86_REG_ESP)
    sel = int.from_bytes(mode.guest_read(mode.stack_base() + esp, 2), "little")
    r = mode.load_ss(sel)
    if r is NOT_MINE:
        return r
    mode.uc.reg_write(X.UC_X86_REG_ESP, (esp + 4) & 0xFFFFFFFF)


@emulates("lss")
def _lss(mode, insn, eip):
    # lss r, m16:32 (m16:16 with 0x66): the selector is checked and SS loaded
    # before the register, so a fault leaves the register as it was.
    dst, src = insn.operands
    size = 2 if insn.opsize16 else 4
    raw = mode.guest_read(effective_address(mode.uc, src, mode.seg_base), size + 2)
    r = mode.load_ss(int.from_bytes(raw[size:], "little"))
    if r is NOT_MINE:
        return r
    write_operand(mode, dataclasses.replace(dst, size=size), int.from_bytes(raw[:size], "little"))


@emulates("lmsw")
def _lmsw(mode, insn, eip):
    cr0 = mode.read_cr(0)
    new = read_operand(mode, insn.operands[0]) & CR0_MSW_BITS
    mode.write_cr(0, (cr0 & ~(CR0_MP | CR0_EM | CR0_TS)) | new | (cr0 & CR0_PE))


@emulates("clts")
def _clts(mode, insn, eip):
    mode.write_cr(0, mode.read_cr(0) & ~CR0_TS)


# -- descriptor tables ------------------------------------------------------------
def _table_operand(mode, insn) -> tuple[int, int]:
    addr = effective_address(mode.uc, insn.operands[0], mode.seg_base)
    limit, base = struct.unpack("<HI", mode.guest_read(addr, 6))
    if insn.opsize16:
        base &= 0xFFFFFF
    return base, limit


@emulates("lgdt")
def _lgdt(mode, insn, eip):
    base, limit = _table_operand(mode, insn)
    mode.load_gdt(base, limit)


@emulates("lidt")
def _lidt(mode, insn, eip):
    base, limit = _table_operand(mode, insn)
    mode.vcpu.set("idtr", limit, base)


@emulates("lldt")
def _lldt(mode, insn, eip):
    # The CPU's checks: a null selector loads a null LDT; otherwise a GDT
    # selector within the limit naming a present LDT descriptor (descriptor()
    # raises #GP past the limit or for TI=1, OutsideRam past RAM's end).
    sel = read_operand(mode, insn.operands[0]) & 0xFFFF
    if sel & SEL_INDEX_MASK:
        desc = mode.vm.delivery.descriptor(sel)
        if desc.access & (DESC_S | DESC_TYPE_MASK) != SYS_LDT:
            raise GuestFault(GP, sel & 0xFFFC)
        if not desc.present:
            raise GuestFault(NP, sel & 0xFFFC)
    mode.vcpu.set("ldtr", sel)


@emulates("ltr")
def _ltr(mode, insn, eip):
    mode.load_tr(read_operand(mode, insn.operands[0]) & 0xFFFF)


# -- returns to the guest's ring 0 ---------------------------------------------------
@emulates("iretd")
def _iret(mode, insn, eip):
    if mode.guest_eflags() & NT_BIT:
        # A return to the task named by the back link (runtime/taskswitch.py):
        # bt's iretd stub exits here on NT; trap's native iret comes through
        # runtime/taskreturn.py instead.
        mode.vm.tasks.iret(eip + insn.size)
        return mode.uc.reg_read(X.UC_X86_REG_EIP)
    if insn.opsize16 or insn.mnemonic == "iret":
        return NOT_MINE  # 16-bit frames are not modelled: reflected as a #GP
    uc = mode.uc
    esp = mode.vm.fast.reg_read(X.UC_X86_REG_ESP)
    new_eip, cs, flags = struct.unpack("<III", mode.guest_read(mode.stack_base() + esp, 12))
    cs &= 0xFFFF
    if flags & VM_BIT and mode.guest_cpl() == 0:
        # A return to virtual-8086 mode: at CPL 1 the CPU ignores VM, so the
        # VMM enters V86 itself (runtime/v86.py); the frame's other six dwords
        # are ESP, SS, ES, DS, FS, GS.  (At the guest's CPL 3 -- bt's stub run
        # by ring 3 -- VM is ignored, as by the CPU.)
        tail = v86.pop_iret_tail(mode.guest_read(mode.stack_base() + esp + 12, 24))
        v86.enter(mode, new_eip, flags, {"cs": cs, **tail}, tail["esp"])
        mode.after_if_change()
        return new_eip & 0xFFFF
    if cs & 3 == 3 and getattr(mode, "tracks_user_flags", False):
        # bt routes irets to ring 3 here too, so the user's IOPL comes from the
        # frame (a native iretd at CPL 1 cannot change the real IOPL).  The CPU's
        # checks come first: a bad frame is the guest's fault, never the engine's.
        _check_return_cs(mode, cs)
        user_esp, ss = struct.unpack("<II", mode.guest_read(mode.stack_base() + esp + 12, 8))
        ss &= 0xFFFF
        _check_return_ss(mode, ss, 3)
        mode.vm.quirks.set_cpl(3)
        mode.load_far(X.UC_X86_REG_SS, ss)
        mode.load_far(X.UC_X86_REG_CS, cs)
        uc.reg_write(X.UC_X86_REG_ESP, user_esp)
        mode.set_guest_eflags(flags & ~VM_BIT)      # VM set here: an iretd at CPL 3 ignores it
        _null_inner_data_segments(mode, 3)
        mode.after_if_change()
        return new_eip
    if cs & 3:
        return NOT_MINE  # a return to an outer ring runs natively; this fault is genuine
    mode.check_code_selector(cs)
    fast = mode.vm.fast                 # the hot case (Linux's sync_core): no binding calls
    fast.reg_write(X.UC_X86_REG_ESP, (esp + 12) & 0xFFFFFFFF)
    mode.load_far(X.UC_X86_REG_CS, cs | 1, fast)
    mode.set_guest_eflags(flags)
    mode.after_if_change()
    return new_eip


def _check_return_cs(mode, cs: int) -> None:
    """iret's checks of the popped CS for a return to ring RPL(cs) (Intel SDM
    IRET; QEMU's helper_ret_protected, which emulate runs): code segment,
    conforming DPL <= RPL or non-conforming DPL == RPL, present."""
    desc = mode.vm.delivery.descriptor(cs)          # #GP(0) null, #GP(cs) past the limit
    code = desc.access & (DESC_S | DESC_CODE) == DESC_S | DESC_CODE
    conforming = desc.access & DESC_CONFORMING
    if not code or (desc.dpl > cs & 3 if conforming else desc.dpl != cs & 3):
        raise GuestFault(GP, cs & 0xFFFC)
    if not desc.present:
        raise GuestFault(NP, cs & 0xFFFC)


def _check_return_ss(mode, ss: int, rpl: int) -> None:
    """The popped SS of a return to an outer ring: RPL and DPL equal the new
    CPL, a writable data segment, present."""
    if ss & 0xFFFC == 0:
        raise GuestFault(GP, 0)
    if ss & 3 != rpl:
        raise GuestFault(GP, ss & 0xFFFC)
    desc = mode.vm.delivery.descriptor(ss)
    if desc.access & (DESC_S | DESC_CODE | DESC_RW) != DESC_S | DESC_RW or desc.dpl != rpl:
        raise GuestFault(GP, ss & 0xFFFC)
    if not desc.present:
        raise GuestFault(NP, ss & 0xFFFC)


_DATA_SEGS = (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS)


def _null_inner_data_segments(mode, cpl: int) -> None:
    """After a return to an outer ring the CPU nulls every data segment register
    that holds a data or non-conforming code segment more privileged than the
    new CPL.  The rule reads the register's cached descriptor; its DPL is read
    here from the guest's table, which differs only if the guest rewrote the
    descriptor since loading it (ring compression's DPL 1 is < 3 as DPL 0 is)."""
    uc = mode.uc
    for reg in _DATA_SEGS:
        sel = mode.guest_selector(uc.reg_read(reg))
        if sel & 0xFFFC == 0:
            continue
        try:
            desc = mode.vm.delivery.descriptor(sel)
        except GuestFault:
            continue
        conforming_code = desc.access & (DESC_CODE | DESC_CONFORMING) == DESC_CODE | DESC_CONFORMING
        if not conforming_code and desc.dpl < cpl:
            uc.reg_write(reg, 0)


@emulates("retf")
def _retf(mode, insn, eip):
    uc = mode.uc
    esp = uc.reg_read(X.UC_X86_REG_ESP)
    new_eip, cs = struct.unpack("<II", mode.guest_read(mode.stack_base() + esp, 8))
    cs &= 0xFFFF
    if cs & 3:
        return NOT_MINE
    mode.check_code_selector(cs)
    extra = insn.operands[0].imm if insn.operands else 0
    uc.reg_write(X.UC_X86_REG_ESP, (esp + 8 + extra) & 0xFFFFFFFF)
    mode.load_far(X.UC_X86_REG_CS, cs | 1)
    return new_eip


# -- caches, TLB, MSRs, time ---------------------------------------------------------
@emulates("invlpg")
def _invlpg(mode, insn, eip):
    # invlpg never faults on its operand and has no per-page form in Unicorn:
    # flush the whole TLB (allowed architecturally; the binding of 2.1.4 has no
    # ctl_flush_tlb method, uc_ctl does it: tests/runtime/test_unicorn_paging_facts.py).
    mode.vm.fast.flush_tlb()            # uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE), pre-encoded


@emulates("wbinvd", "invd")
def _cache(mode, insn, eip):
    pass


# MSRs the deprivileged guest must not reach in the real CPU: the sysenter and
# syscall targets lead into ring 0, the TSC is virtual time, EFER's real bits
# are the VMM's (only NXE is passed on, below).  They live in the virtual CPU,
# read back as Unicorn stores them (SYSENTER_CS keeps 16 bits).  Every other
# MSR is Unicorn's own: the guest's rdmsr/wrmsr under emulate run the same
# helper as uc.msr_read/msr_write, so a write Unicorn ignores (the P6
# performance counters Linux's PMU probe writes and reads back) reads back as
# under emulate (tests/runtime/test_msrs.py).
VIRTUAL_MSRS = {MSR_TSC: 0xFFFFFFFFFFFFFFFF, MSR_SYSENTER_CS: 0xFFFF,
                MSR_SYSENTER_ESP: 0xFFFFFFFFFFFFFFFF, MSR_SYSENTER_EIP: 0xFFFFFFFFFFFFFFFF,
                EFER: 0xFFFFFFFFFFFFFFFF, MSR_STAR: 0xFFFFFFFFFFFFFFFF, MSR_LSTAR: 0xFFFFFFFFFFFFFFFF,
                MSR_CSTAR: 0xFFFFFFFFFFFFFFFF, MSR_SFMASK: 0xFFFFFFFFFFFFFFFF}


@emulates("rdmsr")
def _rdmsr(mode, insn, eip):
    uc = mode.uc
    msr = uc.reg_read(X.UC_X86_REG_ECX)
    if not cpuid_model.msr_implemented(msr):
        raise GuestFault(GP, 0)             # the model's MSRs only (runtime/cpuid.py)
    if msr == MSR_APIC_BASE:
        val = mode.vm.devices["lapic"].base_msr
        uc.reg_write(X.UC_X86_REG_EAX, val & 0xFFFFFFFF)
        uc.reg_write(X.UC_X86_REG_EDX, (val >> 32) & 0xFFFFFFFF)
        return
    val = mode.vcpu.msrs.get(msr, 0) if msr in VIRTUAL_MSRS else uc.msr_read(msr)
    uc.reg_write(X.UC_X86_REG_EAX, val & 0xFFFFFFFF)
    uc.reg_write(X.UC_X86_REG_EDX, (val >> 32) & 0xFFFFFFFF)


@emulates("wrmsr")
def _wrmsr(mode, insn, eip):
    uc = mode.uc
    msr = uc.reg_read(X.UC_X86_REG_ECX)
    value = (uc.reg_read(X.UC_X86_REG_EDX) << 32) | uc.reg_read(X.UC_X86_REG_EAX)
    if not cpuid_model.wrmsr_allowed(msr, value):
        raise GuestFault(GP, 0)
    if msr == MSR_APIC_BASE:
        if not write_apic_base(mode.vm, value):
            raise GuestFault(GP, 0)
        return
    if msr not in VIRTUAL_MSRS:
        uc.msr_write(msr, value)
        return
    mode.vcpu.msrs[msr] = value & VIRTUAL_MSRS[msr]
    if msr == EFER:
        # NXE changes what the MMU does with PAE entries' bit 63 (NX or
        # reserved: tests/runtime/test_guest_memory.py), so the real CPU gets it.
        uc.msr_write(EFER, (uc.msr_read(EFER) & ~EFER_NXE) | (value & EFER_NXE))


def write_apic_base(vm, value: int) -> bool:
    """wrmsr 0x1B: the local APIC holds the MSR (Unicorn's helper ignores the
    write and reads 0); False = reserved bits, #GP.  Shared with runtime/cpucheck.py."""
    lapic = vm.devices["lapic"]
    if not lapic.base_msr_allowed(value):
        return False
    lapic.set_base_msr(value)
    vm.mode.on_irq_state()              # clearing EN drops what the APIC held
    return True


@emulates("rdtsc")
def _rdtsc(mode, insn, eip):
    tsc = mode.virtual_tsc()
    fast = mode.vm.fast                 # runtime/fastuc.py: ~3x cheaper than the binding
    fast.reg_write(X.UC_X86_REG_EAX, tsc & 0xFFFFFFFF)
    fast.reg_write(X.UC_X86_REG_EDX, (tsc >> 32) & 0xFFFFFFFF)


@emulates("rdpmc")
def _rdpmc(mode, insn, eip):
    # The P6 counters never count here (Unicorn ignores writes to them:
    # tests/runtime/test_msrs.py), so a valid counter reads 0; another #GPs.
    # Unicorn itself raises #UD for every rdpmc: runtime/vm.py sends that here.
    if mode.uc.reg_read(X.UC_X86_REG_ECX) >= cpuid_model.PMC_COUNTERS:
        raise GuestFault(GP, 0)
    mode.uc.reg_write(X.UC_X86_REG_EAX, 0)
    mode.uc.reg_write(X.UC_X86_REG_EDX, 0)




# -- sensitive-but-unprivileged instructions ---------------------------------------
# These never fault at CPL 1.  In `bt` mode the patcher routes the sites it cannot
# translate inline to these routines (int3 fallback / stub exits), so the guest
# sees what it would see at CPL 0.
def _guest_flags_for_push(mode, size):
    return mode.guest_eflags() & (0xFFFF if size == 2 else 0x00FFFFFF & ~(VM_BIT | RF_BIT))


def push(mode, value: int, size: int) -> None:
    """Push `value` (`size` bytes) on the guest's stack, as the guest's push would."""
    uc = mode.uc
    esp = (uc.reg_read(X.UC_X86_REG_ESP) - size) & 0xFFFFFFFF
    mode.guest_write(mode.stack_base() + esp, (value & _mask(size)).to_bytes(size, "little"))
    uc.reg_write(X.UC_X86_REG_ESP, esp)


def _pop(mode, size: int) -> int:
    uc = mode.uc
    esp = uc.reg_read(X.UC_X86_REG_ESP)
    value = int.from_bytes(mode.guest_read(mode.stack_base() + esp, size), "little")
    uc.reg_write(X.UC_X86_REG_ESP, (esp + size) & 0xFFFFFFFF)
    return value


@emulates("pushfd")
def _pushf(mode, insn, eip):
    size = 2 if insn.mnemonic == "pushf" else 4
    push(mode, _guest_flags_for_push(mode, size), size)


@emulates("popfd")
def _popf(mode, insn, eip):
    size = 2 if insn.mnemonic == "popf" else 4
    value = _pop(mode, size)
    old = mode.guest_eflags()
    keep = 0xFFFF0000 if size == 2 else VM_BIT | VIF_BIT | VIP_BIT   # not popf's to set
    cpl = mode.guest_cpl()
    if cpl > 0:
        keep |= IOPL_MASK                   # only ring 0 changes IOPL
        if cpl > (old & IOPL_MASK) >> IOPL_SHIFT:
            keep |= IF_BIT                  # IF only where CPL <= IOPL (silently kept)
    new = (old & keep) | (value & ~keep & 0xFFFFFFFF)
    mode.set_guest_eflags((new & ~0x28) | EFLAGS_FIXED_ONE)
    mode.after_if_change()


def _store_table(mode, insn, field):
    limit, base = mode.vcpu.get(field)
    if insn.opsize16:
        base &= 0xFFFFFF    # with 0x66 the top byte of the base is stored as 0
    op = insn.operands[0]
    addr = effective_address(mode.uc, op, mode.seg_base)
    mode.guest_write(addr, struct.pack("<HI", limit, base))


@emulates("sgdt")
def _sgdt(mode, insn, eip):
    _store_table(mode, insn, "gdtr")


@emulates("sidt")
def _sidt(mode, insn, eip):
    _store_table(mode, insn, "idtr")


def _store_word(mode, insn, value):
    op = insn.operands[0]
    if op.kind == "mem":
        write_operand(mode, dataclasses.replace(op, size=2), value)
    else:
        write_operand(mode, op, value)   # register forms zero-extend


@emulates("sldt")
def _sldt(mode, insn, eip):
    _store_word(mode, insn, mode.vcpu.get("ldtr"))


@emulates("str")
def _str(mode, insn, eip):
    _store_word(mode, insn, mode.vcpu.get("tr"))


@emulates("smsw")
def _smsw(mode, insn, eip):
    # smsw r32 writes CR0 whole, as the CPU does (and emulate: runtime/smswfix.py);
    # r16 and m16 the low word.
    op = insn.operands[0]
    if op.kind == "reg" and op.size == 4:
        write_operand(mode, op, mode.read_cr(0))
        return
    _store_word(mode, insn, mode.read_cr(0) & 0xFFFF)


def _access_check(mode, sel: int):
    """The descriptor `sel` names as the guest sees it (None = the check fails)."""
    if sel & SEL_INDEX_MASK == 0 or sel & SEL_TI:
        return None
    base, limit = mode.vcpu.gdtr()
    if (sel & SEL_INDEX_MASK) + DESC_SIZE - 1 > limit:
        return None
    from runtime.delivery import Descriptor
    return Descriptor.parse(mode.guest_read(base + (sel & SEL_INDEX_MASK), DESC_SIZE))


def _set_zf(mode, on: bool):
    uc = mode.uc
    fl = uc.reg_read(X.UC_X86_REG_EFLAGS)
    uc.reg_write(X.UC_X86_REG_EFLAGS, (fl | ZF_BIT) if on else (fl & ~ZF_BIT))


# The system descriptors lar and lsl accept (others clear ZF).
_LSL_SYSTEM_TYPES = frozenset({SYS_TSS16_AVAILABLE, SYS_LDT, SYS_TSS16_BUSY, SYS_TSS32_AVAILABLE, SYS_TSS32_BUSY})
_LAR_SYSTEM_TYPES = _LSL_SYSTEM_TYPES | {SYS_CALL_GATE16, SYS_TASK_GATE, SYS_CALL_GATE32}


def _visible(mode, desc, sel: int, kind: str) -> bool:
    """Privilege and type rules of lar/lsl/verr/verw at the guest's own CPL."""
    cpl = mode.guest_cpl()
    sys_type = desc.access & DESC_TYPE_MASK
    is_seg = bool(desc.access & DESC_S)
    conforming_code = is_seg and desc.access & (DESC_CODE | DESC_CONFORMING) == DESC_CODE | DESC_CONFORMING
    if not is_seg:
        ok_types = {"lar": _LAR_SYSTEM_TYPES, "lsl": _LSL_SYSTEM_TYPES}.get(kind, set())
        if sys_type not in ok_types:
            return False
    if kind in ("verr", "verw"):
        if not is_seg:
            return False
        code = bool(desc.access & DESC_CODE)
        if kind == "verw" and (code or not desc.access & DESC_RW):
            return False
        if kind == "verr" and code and not desc.access & DESC_RW:
            return False
    if not conforming_code and (desc.dpl < cpl or desc.dpl < (sel & 3)):
        return False
    return True


@emulates("lar", "lsl")
def _lar_lsl(mode, insn, eip):
    dst, src = insn.operands
    sel = read_operand(mode, src) & 0xFFFF
    desc = _access_check(mode, sel)
    if desc is None or not _visible(mode, desc, sel, insn.mnemonic):
        _set_zf(mode, False)
        return None
    if insn.mnemonic == "lar":
        base, _ = mode.vcpu.gdtr()
        raw = struct.unpack("<I", mode.guest_read(base + (sel & 0xFFF8) + 4, 4))[0]
        value = raw & 0x00F0FF00 if dst.size == 4 else raw & 0xFF00
    else:
        value = desc.limit
    write_operand(mode, dst, value)
    _set_zf(mode, True)


@emulates("verr", "verw")
def _verr_verw(mode, insn, eip):
    sel = read_operand(mode, insn.operands[0]) & 0xFFFF
    desc = _access_check(mode, sel)
    _set_zf(mode, desc is not None and _visible(mode, desc, sel, insn.mnemonic))


@emulates("push_cs", "push_ss")
def _push_sreg(mode, insn, eip):
    op = insn.operands[0]
    size = 2 if insn.opsize16 else 4
    push(mode, mode.guest_selector(mode.uc.reg_read(op.reg)), size)


def _far_pointer(mode, insn) -> tuple[int, int]:
    """(selector, offset) of a far jmp/call: ptr16:32 (ptr16:16 with 0x66) or m16:32."""
    ops = insn.operands
    if len(ops) == 2 and ops[0].kind == "imm":
        return ops[0].imm & 0xFFFF, ops[1].imm & (0xFFFF if insn.opsize16 else 0xFFFFFFFF)
    addr = effective_address(mode.uc, ops[0], mode.seg_base)
    if insn.opsize16:
        off, sel = struct.unpack("<HH", mode.guest_read(addr, 4))
    else:
        off, sel = struct.unpack("<IH", mode.guest_read(addr, 6))
    return sel, off


@emulates("jmp_far")
def _jmp_far(mode, insn, eip):
    # bt's stub exits here only for an RPL-1 selector; an int3 patch (a form too
    # short for a jump patch) for every one.  A TSS or task gate switches
    # tasks; call gates are not modelled.
    sel, off = _far_pointer(mode, insn)
    if segments.far_code_segment(mode, sel, off) is None:
        return _far_to_task(mode, sel, JMP_TASK, eip + insn.size)
    mode.load_far(X.UC_X86_REG_CS, segments.code_selector(mode, sel))
    return off


def _far_to_task(mode, sel: int, source: str, next_eip: int):
    """A far jmp/call whose selector names a system descriptor: a TSS or task
    gate is a task switch (runtime/taskswitch.py; at CPL 1 the DPL-0 descriptor
    faulted); a call gate is not modelled (the #GP is reflected)."""
    if not segments.names_task(mode, sel):
        return NOT_MINE
    mode.vm.tasks.far(sel, source, next_eip)
    return mode.uc.reg_read(X.UC_X86_REG_EIP)


@emulates("call_far")
def _call_far(mode, insn, eip):
    """Far call: the target is checked first, as the CPU does (an RPL-1 kernel
    selector faults: issue 15 cause 6); the pushed CS is the guest's view (RPL 0),
    not ring 1's."""
    sel, off = _far_pointer(mode, insn)
    if segments.far_code_segment(mode, sel, off) is None:
        return _far_to_task(mode, sel, CALL_TASK, eip + insn.size)
    uc = mode.uc
    size = 2 if insn.opsize16 else 4
    push(mode, mode.guest_selector(uc.reg_read(X.UC_X86_REG_CS)), size)
    push(mode, eip + insn.size, size)
    mode.load_far(X.UC_X86_REG_CS, segments.code_selector(mode, sel))
    return off


__all__ = ["ROUTINES", "NOT_MINE", "emulates", "emulate", "has_routine", "push",
           "read_operand", "write_operand", "GuestFault", "GP", "VFLAGS_MASK", "CR4_TSD"]

check_registry("emulation routines", ROUTINES, lambda row: row.emulation)
