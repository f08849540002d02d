"""Delivering interrupts and exceptions through the guest's IDT.

Unicorn never vectors through an IDT: every exception, software interrupt and
hardware interrupt reaches the VMM, which builds the architectural frame itself
(docs/machine.md).  This module is that one delivery path, shared by all
modes.  Ring compression enters only through `ring_of`: the guest's privilege
level 0 runs at real ring 0 in `emulate` and at real ring 1 in `trap`/`bt`, and
the frame the guest handler sees always carries the guest's own view (CS with
RPL 0 for a kernel frame, EFLAGS with the virtual IF/IOPL).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from unicorn import x86_const as X

from bt.x86 import (CONTRIBUTORY_VECTORS, DESC_CODE, DESC_CONFORMING, DESC_DPL_SHIFT, DESC_FLAG_G, DESC_PRESENT, DESC_S, DESC_SIZE, DF,
                    ERROR_CODE_VECTORS, GP, IF_BIT, NP, NT_BIT, PF, PF_ERR_WRITE, RF_BIT, SEL_INDEX_MASK,
                    SEL_TI, SYS_INTERRUPT_GATE32, SYS_TASK_GATE, SYS_TRAP_GATE32, TF_BIT, TS, TSS_ESP0, TSS_STACK_STRIDE,
                    VM_BIT)
from runtime.memory import PageFault
from runtime.realmode import deliver_real
from runtime import v86

GATE_PRESENT = DESC_PRESENT << 8     # the access byte's present bit in a gate's high dword


class GuestFault(Exception):
    """A fault the guest must see (raised while the VMM acts on its behalf)."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None):
        super().__init__(f"guest fault {vector} ({error_code})")
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        # Set by a task switch for a fault after its commit point: the fault
        # belongs to the new task and is delivered with its EIP (runtime/taskswitch.py).
        self.task_eip: int | None = None


class TripleFault(Exception):
    """Delivery of a double fault failed: a real CPU would shut down."""


@dataclass
class Descriptor:
    base: int
    limit: int
    access: int
    flags: int

    @property
    def dpl(self) -> int:
        return (self.access >> DESC_DPL_SHIFT) & 3

    @property
    def present(self) -> bool:
        return bool(self.access & DESC_PRESENT)

    @classmethod
    def parse(cls, raw: bytes) -> "Descriptor":
        lo, hi = struct.unpack("<II", raw)
        base = ((lo >> 16) & 0xFFFF) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        flags = (hi >> 20) & 0xF
        if flags & DESC_FLAG_G:
            limit = (limit << 12) | 0xFFF
        return cls(base, limit, (hi >> 8) & 0xFF, flags)


class Delivery:
    """Builds exception/interrupt frames for one VM.

    `vm` provides: uc, mem (GuestMemory), quirks, guest_cpl(), ring_of(guest_ring),
    guest_eflags(), set_guest_eflags(value), guest_gdtr(), guest_idtr(), guest_tr_base(),
    counters.
    """

    def __init__(self, vm):
        self.vm = vm

    # -- descriptor tables ----------------------------------------------------
    def descriptor(self, selector: int) -> Descriptor:
        base, limit = self.vm.guest_gdtr()
        index = selector & SEL_INDEX_MASK
        if selector & SEL_TI or index + DESC_SIZE - 1 > limit or index == 0:
            raise GuestFault(GP, selector & 0xFFFC)
        try:
            return Descriptor.parse(self.vm.mem.read_cpu(base + index, DESC_SIZE))
        except PageFault as pf:
            raise GuestFault(PF, pf.error_code, pf.linear) from None

    # -- delivery ------------------------------------------------------------
    def deliver(self, vector: int, *, return_eip: int, error_code: int | None = None,
                soft: bool = False, external: bool = False, fault_eip: int | None = None) -> None:
        """Deliver `vector`; escalate to #DF and to a triple fault like a CPU.

        `return_eip` is the EIP the frame holds (past an `int n`, a trap's next
        instruction); `fault_eip` the one a fault *while delivering* holds: the
        SDM makes such a fault restartable, so for a software interrupt it is
        the address of the `int` itself (its handler's iret runs it again;
        kvm-unit-tests eventinj "NP exception").  Default: `return_eip`."""
        if fault_eip is None:
            fault_eip = return_eip
        try:
            self._deliver(vector, return_eip, error_code, soft, external)
        except GuestFault as f:
            if vector == DF:
                raise TripleFault(f"fault {f.vector} while delivering a double fault") from None
            if _contributory(vector) and _contributory(f.vector) or vector == PF and f.vector in CONTRIBUTORY_VECTORS | {PF}:
                self.vm.counters.add("exceptions_delivered", DF)
                self.deliver(DF, return_eip=fault_eip, error_code=0)
                return
            if f.task_eip is not None:
                fault_eip = f.task_eip
            if f.cr2 is not None:
                self.vm.uc.reg_write(X.UC_X86_REG_CR2, f.cr2)
            self.deliver(f.vector, return_eip=fault_eip, error_code=f.error_code)

    def _deliver(self, vector, return_eip, error_code, soft, external):
        vm = self.vm
        uc = vm.uc
        if vm.real_mode():          # CR0.PE clear: the IVT (runtime/realmode.py)
            if not deliver_real(vm, vector, return_eip):
                # QEMU's error code; real mode pushes none, only the vector matters.
                raise GuestFault(GP, vector * 8 + 2 + (0 if soft else 1))
            return
        # EXT (bit 0 of a fault's error code): the event was not the program's
        # own `int n`/int3/into -- a hardware interrupt or an earlier exception.
        ext = 0 if soft else 1
        idt_base, idt_limit = vm.guest_idtr()
        if vector * 8 + 7 > idt_limit:
            raise GuestFault(GP, vector * 8 + 2 + ext)
        try:
            lo, hi = struct.unpack("<II", vm.mem.read_cpu(idt_base + vector * 8, 8))
        except PageFault as pf:
            raise GuestFault(PF, pf.error_code, pf.linear) from None
        gate_type = (hi >> 8) & 0x1F
        gate_dpl = (hi >> 13) & 3
        from_v86 = v86.in_v86(uc)       # CPL 3, the frame holds the V86 segments (runtime/v86.py)
        cpl = 3 if from_v86 else vm.guest_cpl()
        # The SDM's order (INT n pseudocode): gate type, then a software
        # interrupt's DPL check, then the gate's present bit, then its selector.
        if gate_type not in (SYS_INTERRUPT_GATE32, SYS_TRAP_GATE32, SYS_TASK_GATE):
            raise GuestFault(GP, vector * 8 + 2 + ext)
        if soft and gate_dpl < cpl:
            raise GuestFault(GP, vector * 8 + 2)
        if not hi & GATE_PRESENT:
            raise GuestFault(NP, vector * 8 + 2 + ext)
        has_error = error_code is not None or (vector in ERROR_CODE_VECTORS and not soft and not external)
        if gate_type == SYS_TASK_GATE:
            # A hardware task switch (runtime/taskswitch.py); the error code,
            # if any, goes on the new task's stack.
            vm.tasks.through_idt_gate(lo, vector, return_eip=return_eip,
                                      error_code=(error_code or 0) if has_error else None, ext=ext)
            return
        selector = (lo >> 16) & 0xFFFF
        offset = (lo & 0xFFFF) | (hi & 0xFFFF0000)
        try:
            target = self.descriptor(selector)
        except GuestFault as f:
            if f.vector == GP:
                raise GuestFault(GP, (selector & 0xFFFC) + ext) from None
            raise
        if (target.access & (DESC_S | DESC_CODE)) != DESC_S | DESC_CODE or target.dpl > cpl:
            raise GuestFault(GP, (selector & 0xFFFC) + ext)
        if not target.present:
            raise GuestFault(NP, (selector & 0xFFFC) + ext)
        new_cpl = cpl if target.access & DESC_CONFORMING else target.dpl
        if from_v86 and new_cpl != 0:
            # Only a ring-0 handler may interrupt V86 code (SDM INT n: "IF VM = 1").
            raise GuestFault(GP, (selector & 0xFFFC) + ext)
        vm.mode.on_vmm_branch(offset)

        eflags = vm.guest_eflags()
        old_cs = uc.reg_read(X.UC_X86_REG_CS)
        old_ss = uc.reg_read(X.UC_X86_REG_SS)
        old_esp = uc.reg_read(X.UC_X86_REG_ESP)
        guest_old_cs = vm.guest_selector(old_cs)
        frame = [return_eip & 0xFFFFFFFF, guest_old_cs, eflags]
        if from_v86:
            frame = v86.v86_frame(uc, return_eip, eflags)
        if new_cpl < cpl:
            tss = vm.guest_tr_base()
            if tss is None:
                raise GuestFault(TS, 0)
            try:
                esp0, ss0 = struct.unpack("<II", vm.mem.read_cpu(tss + TSS_ESP0 + TSS_STACK_STRIDE * new_cpl, 8))
            except PageFault as pf:
                raise GuestFault(PF, pf.error_code, pf.linear) from None
            ss0 &= 0xFFFF
            if not from_v86:
                frame += [old_esp, vm.guest_selector(old_ss)]
            stack_sel, esp = ss0, esp0
        else:
            stack_sel, esp = vm.guest_selector(old_ss), old_esp
        if has_error:
            frame.insert(0, (error_code or 0) & 0xFFFFFFFF)
        data = struct.pack(f"<{len(frame)}I", *frame)
        stack_base = self.descriptor(stack_sel).base if new_cpl < cpl else vm.stack_base()
        esp = (esp - len(data)) & 0xFFFFFFFF
        try:
            vm.mem.push_cpu(stack_base + esp, data)
        except PageFault as pf:
            raise GuestFault(PF, pf.error_code | PF_ERR_WRITE, pf.linear) from None

        if new_cpl < cpl:
            if from_v86:
                v86.leave(uc)       # protected-mode loads from here
            vm.quirks.set_cpl(vm.ring_of(new_cpl))
            uc.reg_write(X.UC_X86_REG_SS, vm.real_selector(stack_sel, new_cpl))
        uc.reg_write(X.UC_X86_REG_ESP, esp)
        uc.reg_write(X.UC_X86_REG_CS, vm.real_selector(selector, new_cpl))
        if from_v86:
            v86.null_data_segments(uc)
        uc.reg_write(X.UC_X86_REG_EIP, offset)
        new_flags = eflags & ~(TF_BIT | NT_BIT | RF_BIT | VM_BIT)
        if gate_type == SYS_INTERRUPT_GATE32:
            new_flags &= ~IF_BIT
        vm.set_guest_eflags(new_flags)


def _contributory(v: int) -> bool:
    return v in CONTRIBUTORY_VECTORS
