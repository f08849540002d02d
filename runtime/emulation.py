"""Emulation routines for instructions that fault because the guest kernel runs
in ring 1 (trap-and-emulate).  One function per instruction family, registered
with `@emulates(mnemonic, ...)`; the exit dispatcher (runtime/trap.py) looks the
decoded mnemonic up here.

A routine gets (mode, insn, eip) and either
  * returns the EIP to resume at (None = the next instruction),
  * returns NOT_MINE when this fault is not one deprivileging caused (the
    dispatcher then reflects it to the guest as the genuine fault it is), or
  * raises GuestFault for a fault the guest must see instead.
A routine that changed something that needs the run loop's attention (hlt, an
interrupt that became deliverable, a device asking to stop) sets mode.stop_slice.
"""
from __future__ import annotations

import struct
from typing import Callable

from unicorn import x86_const as X

from runtime.decode import Insn, effective_address
from runtime.delivery import GP, GuestFault
from runtime.vcpu import IF_BIT, VFLAGS_MASK

NOT_MINE = object()

ROUTINES: dict[str, Callable] = {}

CR0_TS = 1 << 3
CR0_PE = 1
CR4_TSD = 1 << 2


def emulates(*mnemonics: str):
    def register(fn):
        for m in mnemonics:
            if m in ROUTINES:
                raise ValueError(f"two emulation routines for {m}")
            ROUTINES[m] = fn
        return fn
    return register


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def read_operand(mode, op) -> int:
    uc = mode.uc
    if op.kind in ("reg", "seg"):
        return uc.reg_read(op.reg) & _mask(op.size)
    if op.kind == "imm":
        return op.imm & _mask(op.size)
    if op.kind == "mem":
        addr = effective_address(uc, op, mode.seg_base)
        return int.from_bytes(mode.guest_read(addr, op.size), "little")
    raise ValueError(op.kind)


def write_operand(mode, op, value: int) -> None:
    uc = mode.uc
    if op.kind == "reg":
        uc.reg_write(op.reg, value & _mask(op.size))
    elif op.kind == "mem":
        addr = effective_address(uc, op, mode.seg_base)
        mode.guest_write(addr, (value & _mask(op.size)).to_bytes(op.size, "little"))
    else:
        raise ValueError(op.kind)


# -- interrupt flag and halting ------------------------------------------------
@emulates("cli")
def _cli(mode, insn, eip):
    mode.vcpu.vflags = mode.vcpu.vflags & ~IF_BIT


@emulates("sti")
def _sti(mode, insn, eip):
    was = mode.vcpu.vflags
    mode.vcpu.vflags = was | IF_BIT
    if not was & IF_BIT:
        mode.begin_sti_shadow()


@emulates("hlt")
def _hlt(mode, insn, eip):
    mode.vm.on_hlt()
    mode.stop_slice = True


# Port I/O never reaches this table: Unicorn 2.1 does not apply the IOPL/TSS
# I/O-permission check, and its UC_HOOK_INSN in/out hooks (string forms included)
# fire at every CPL, so every port access exits into the VMM through that one
# cheap, counted path in all modes (tests/runtime/test_unicorn_facts.py).


# -- control and debug registers, segment loads --------------------------------------
@emulates("mov")
def _mov(mode, insn, eip):
    dst, src = insn.operands
    v = mode.vcpu
    if dst.kind == "cr":
        mode.write_cr(dst.reg, read_operand(mode, src))
    elif src.kind == "cr":
        write_operand(mode, dst, mode.read_cr(src.reg))
    elif dst.kind == "dr":
        drs = list(v.get("dr"))
        drs[dst.reg] = read_operand(mode, src)
        v.set("dr", *drs)
    elif src.kind == "dr":
        write_operand(mode, dst, v.get("dr")[src.reg])
    elif dst.kind == "seg" and dst.reg == X.UC_X86_REG_SS:
        return mode.load_ss(read_operand(mode, src))
    else:
        return NOT_MINE


@emulates("pop")
def _pop(mode, insn, eip):
    op = insn.operands[0]
    if op.kind != "seg" or op.reg != X.UC_X86_REG_SS:
        return NOT_MINE
    esp = mode.uc.reg_read(X.UC_X86_REG_ESP)
    sel = int.from_bytes(mode.guest_read(mode.stack_base() + esp, 2), "little")
    r = mode.load_ss(sel)
    if r is NOT_MINE:
        return r
    mode.uc.reg_write(X.UC_X86_REG_ESP, (esp + 4) & 0xFFFFFFFF)


@emulates("lmsw")
def _lmsw(mode, insn, eip):
    cr0 = mode.read_cr(0)
    new = read_operand(mode, insn.operands[0]) & 0xF
    mode.write_cr(0, (cr0 & ~0xE) | new | (cr0 & CR0_PE))


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
    mode.vcpu.set("ldtr", read_operand(mode, insn.operands[0]) & 0xFFFF)


@emulates("ltr")
def _ltr(mode, insn, eip):
    mode.load_tr(read_operand(mode, insn.operands[0]) & 0xFFFF)


# -- returns to the guest's ring 0 ---------------------------------------------------
@emulates("iretd", "iret")
def _iret(mode, insn, eip):
    if insn.opsize16 or insn.mnemonic == "iret":
        return NOT_MINE  # 16-bit frames are not modelled: reflected as a #GP
    uc = mode.uc
    esp = uc.reg_read(X.UC_X86_REG_ESP)
    new_eip, cs, flags = struct.unpack("<III", mode.guest_read(mode.stack_base() + esp, 12))
    cs &= 0xFFFF
    if cs & 3:
        return NOT_MINE  # a return to an outer ring runs natively; this fault is genuine
    mode.check_code_selector(cs)
    uc.reg_write(X.UC_X86_REG_ESP, (esp + 12) & 0xFFFFFFFF)
    uc.reg_write(X.UC_X86_REG_CS, cs | 1)
    mode.set_guest_eflags(flags)
    mode.after_if_change()
    return new_eip


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
    uc.reg_write(X.UC_X86_REG_CS, cs | 1)
    return new_eip


# -- caches, TLB, MSRs, time ---------------------------------------------------------
@emulates("invlpg")
def _invlpg(mode, insn, eip):
    mode.uc.ctl_flush_tlb()


@emulates("wbinvd", "invd")
def _cache(mode, insn, eip):
    pass


@emulates("rdmsr")
def _rdmsr(mode, insn, eip):
    uc = mode.uc
    val = mode.vcpu.msrs.get(uc.reg_read(X.UC_X86_REG_ECX), 0)
    uc.reg_write(X.UC_X86_REG_EAX, val & 0xFFFFFFFF)
    uc.reg_write(X.UC_X86_REG_EDX, val >> 32)


@emulates("wrmsr")
def _wrmsr(mode, insn, eip):
    uc = mode.uc
    msr = uc.reg_read(X.UC_X86_REG_ECX)
    mode.vcpu.msrs[msr] = (uc.reg_read(X.UC_X86_REG_EDX) << 32) | uc.reg_read(X.UC_X86_REG_EAX)


@emulates("rdtsc")
def _rdtsc(mode, insn, eip):
    tsc = mode.virtual_tsc()
    mode.uc.reg_write(X.UC_X86_REG_EAX, tsc & 0xFFFFFFFF)
    mode.uc.reg_write(X.UC_X86_REG_EDX, (tsc >> 32) & 0xFFFFFFFF)


@emulates("rdpmc")
def _rdpmc(mode, insn, eip):
    mode.uc.reg_write(X.UC_X86_REG_EAX, 0)
    mode.uc.reg_write(X.UC_X86_REG_EDX, 0)


__all__ = ["ROUTINES", "NOT_MINE", "emulates", "read_operand", "write_operand",
           "GuestFault", "GP", "VFLAGS_MASK", "CR4_TSD"]
