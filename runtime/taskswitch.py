"""The hardware task switch (SDM vol. 3, 7.3), done by the VMM.

Unicorn 2.1.4 runs a far jmp/call to a TSS or task gate and an iret with NT=1
itself at CPL 0 (its QEMU's `switch_tss`, tests/runtime/test_taskswitch.py
checks it), but it never vectors through an IDT, so a task gate in the IDT --
an exception, an external interrupt, an NMI or an `int n` -- reaches the VMM
(runtime/delivery.py).  Under trap and bt the guest kernel runs at CPL 1, where
a far jmp/call to a TSS or task gate faults (#GP: the shadow GDT holds them
with DPL 0; runtime/emulation.py `_far_to_task`) and an iret with NT=1 reads
the VMM's own TSS in the guarded hypervisor area (runtime/taskreturn.py):
both come here too.  So this is the one task switch the VMM performs, in
every mode, with the guest's own view of selectors, flags, TR and LDTR (`mode.*`).

The order, checks and error codes are QEMU's `switch_tss` (what emulate's
native far jmp/call/iret does: a busy TSS refused with #GP for jmp, call and
interrupt, a free one with #TS for iret), and the SDM's where they differ: an
error code carries EXT for an event that was not the program's own `int n`,
and a conforming code segment needs DPL <= RPL rather than DPL == RPL.  Not
modelled (the run ends with a VMM outcome naming it): a 16-bit TSS, an LDT
(the VMM refuses LDT selectors everywhere).  A switch into a task whose
EFLAGS has VM set enters virtual-8086 mode (runtime/v86.py `load_task`), one
out of it saves the V86 segments as they are.
"""
from __future__ import annotations

import struct

from bt.errors import VMMError
from bt.x86 import (CR0_PG, CR0_TS, DESC_CODE, DESC_CONFORMING, DESC_RW, DESC_S, DESC_SIZE,
                    DESC_TYPE_MASK, GP, NP, NT_BIT, PF, PF_ERR_WRITE, SEL_INDEX_MASK, SEL_TI, SYS_LDT,
                    SYS_TASK_GATE, SYS_TSS16_AVAILABLE, SYS_TSS16_BUSY, SYS_TSS32_AVAILABLE, SYS_TSS32_BUSY,
                    TS, TSS32_SIZE, TSS_BUSY_BIT, VM_BIT)
from runtime.breakpoints import clear_local_enables
from runtime.delivery import Descriptor, GuestFault
from runtime.memory import PageFault
from runtime import v86
from runtime.v86 import V86_LIMIT

JMP, CALL, IRET = "jmp", "call", "iret"     # where the switch comes from (interrupts: CALL)

# 32-bit TSS offsets (SDM figure 7-2).
TSS_LINK, TSS_CR3, TSS_EIP, TSS_EFLAGS, TSS_GPRS, TSS_SEGS, TSS_LDT = 0x00, 0x1C, 0x20, 0x24, 0x28, 0x48, 0x60
SEG_ORDER = ("es", "cs", "ss", "ds", "fs", "gs")        # their order in the TSS, 4 bytes apart
GPR_ORDER = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
# The order the new task's segments are loaded and checked in (QEMU's, and the SDM's).
LOAD_ORDER = ("cs", "ss", "es", "ds", "fs", "gs")
# What a task switch loads into EFLAGS from the new TSS: everything but the
# reserved bits (the fixed one included: EFLAGS always has it).
EFLAGS_LOADED = 0x003F7FD7


class TaskSwitchUnsupported(VMMError):
    """A task switch this VMM does not model (16-bit TSS, an LDT)."""


class TaskSwitch:
    """Performs task switches for one VM; `switches` counts them by source."""

    def __init__(self, vm):
        self.vm = vm
        self.switches = {JMP: 0, CALL: 0, IRET: 0}

    # -- entry points ---------------------------------------------------------------
    def through_idt_gate(self, gate_lo: int, vector: int, *, return_eip: int, error_code: int | None,
                         ext: int) -> None:
        """An interrupt or exception through a present IDT task gate (its type,
        presence and a soft interrupt's DPL already checked by delivery): switch
        with the interrupted EIP saved, then push the error code, if any, on the
        new task's stack (SDM 6.12.2)."""
        tss_sel = (gate_lo >> 16) & 0xFFFF
        self.switch(tss_sel, CALL, return_eip, ext=ext)
        if error_code is not None:
            vm = self.vm
            esp = (vm.uc.reg_read(_reg("esp")) - 4) & 0xFFFFFFFF
            try:
                vm.mem.push_cpu(vm.stack_base() + esp, struct.pack("<I", error_code & 0xFFFFFFFF))
            except PageFault as pf:
                raise GuestFault(PF, pf.error_code | PF_ERR_WRITE, pf.linear) from None
            vm.uc.reg_write(_reg("esp"), esp)

    def far(self, selector: int, source: str, next_eip: int) -> None:
        """A far jmp or call whose selector names a TSS or a task gate in the
        GDT (the caller saw a system descriptor): the privilege check of the
        descriptor, then the switch (QEMU's helper_ljmp/lcall_protected)."""
        desc = self._descriptor(selector, GP, 0)
        typ = desc.access & DESC_TYPE_MASK
        cpl = self.vm.guest_cpl()
        if desc.dpl < cpl or desc.dpl < selector & 3:
            raise GuestFault(GP, selector & 0xFFFC)
        if typ == SYS_TASK_GATE:
            if not desc.present:
                raise GuestFault(NP, selector & 0xFFFC)
            raw = self._read(self._gdt_address(selector), DESC_SIZE)
            tss_sel = struct.unpack("<HH", raw[:4])[1]
            self.switch(tss_sel, source, next_eip)
        else:
            self.switch(selector, source, next_eip)

    def iret(self, next_eip: int) -> None:
        """iret with NT=1: return to the task named by the current TSS's back link."""
        _, base, _, _ = self.vm.mode.guest_tr()
        link = struct.unpack("<H", self._read(base + TSS_LINK, 2))[0]
        if link & SEL_TI:
            raise GuestFault(TS, link & 0xFFFC)
        self.switch(link, IRET, next_eip)

    # -- the switch itself ------------------------------------------------------------
    def switch(self, tss_sel: int, source: str, next_eip: int, *, ext: int = 0) -> None:
        vm, mode, uc = self.vm, self.vm.mode, self.vm.uc
        err = (tss_sel & 0xFFFC) + ext
        if tss_sel & SEL_TI:                 # a task gate's (or back link's) TSS selector in the LDT
            raise GuestFault(TS, err)
        # The new TSS's descriptor: in the GDT, a TSS, not busy (busy for iret), present, big enough.
        desc = self._descriptor(tss_sel, GP if source != IRET else TS, ext)
        typ = desc.access & (DESC_S | DESC_TYPE_MASK)
        if typ in (SYS_TSS16_AVAILABLE, SYS_TSS16_BUSY):
            raise TaskSwitchUnsupported(f"a task switch to a 16-bit TSS (selector {tss_sel:#x})")
        if typ not in (SYS_TSS32_AVAILABLE, SYS_TSS32_BUSY):
            raise GuestFault(GP if source != IRET else TS, err)
        busy = typ == SYS_TSS32_BUSY
        if source == IRET and not busy:
            raise GuestFault(TS, err)
        if source != IRET and busy:
            raise GuestFault(GP, err)
        if not desc.present:
            raise GuestFault(NP, err)
        if desc.limit < TSS32_SIZE - 1:
            raise GuestFault(TS, err)

        new = self._read(desc.base, TSS32_SIZE)
        new_cr3, new_eip, new_eflags = struct.unpack_from("<III", new, TSS_CR3)
        new_gprs = struct.unpack_from("<8I", new, TSS_GPRS)
        new_segs = [struct.unpack_from("<H", new, TSS_SEGS + 4 * i)[0] for i in range(6)]
        new_ldt = struct.unpack_from("<H", new, TSS_LDT)[0]

        old_sel, old_base, old_limit, _ = mode.guest_tr()
        if old_limit < TSS32_SIZE - 1:
            raise GuestFault(TS, (old_sel & 0xFFFC) + ext)
        # The old TSS must be writable before anything changes (QEMU probes it the same way).
        self._read(old_base, TSS32_SIZE)

        if source in (JMP, IRET):
            self._set_busy(old_sel, False)
        old_eflags = vm.guest_eflags()
        if source == IRET:
            old_eflags &= ~NT_BIT
        regs = [uc.reg_read(_reg(r)) for r in GPR_ORDER]
        # CS and SS carry ring compression's RPL; data segments hold the guest's
        # own selector (an RPL-1 one is the guest's too: _load_segments)
        leaving_v86 = v86.in_v86(uc)       # the paragraph numbers as they are
        segs = [vm.guest_selector(uc.reg_read(_reg(s))) if s in ("cs", "ss") and not leaving_v86
                else uc.reg_read(_reg(s)) for s in SEG_ORDER]
        self._write(old_base + TSS_EIP, struct.pack("<II8I", next_eip & 0xFFFFFFFF, old_eflags, *regs))
        for i, sel in enumerate(segs):          # words: the reserved upper halves stay as they are
            self._write(old_base + TSS_SEGS + 4 * i, struct.pack("<H", sel))

        if source == CALL:
            self._write(desc.base + TSS_LINK, struct.pack("<H", old_sel))
            new_eflags |= NT_BIT
        if source in (JMP, CALL):
            self._set_busy(tss_sel, True)
        self.switches[source] += 1

        # Committed: from here a fault is the new task's (SDM 7.3, step 11):
        # it is delivered with the new task's EIP (`GuestFault.task_eip`).
        mode.write_cr(0, mode.read_cr(0) | CR0_TS)
        mode.set_guest_tr(tss_sel, desc.base, desc.limit, desc.access & ~TSS_BUSY_BIT)
        if mode.read_cr(0) & CR0_PG:
            mode.write_cr(3, new_cr3)
        for r, v in zip(GPR_ORDER, new_gprs):
            uc.reg_write(_reg(r), v)
        try:
            self._load_ldt(new_ldt)
            if new_eflags & VM_BIT:
                # A virtual-8086 task: its segments are paragraph numbers,
                # no descriptor is read, the CPL is 3 (runtime/v86.py).
                v86.load_task(mode, dict(zip(SEG_ORDER, new_segs)), new_eflags & EFLAGS_LOADED)
                if new_eip > V86_LIMIT:
                    raise GuestFault(GP, 0)
            else:
                self._load_segments(dict(zip(SEG_ORDER, new_segs)), new_eflags)
                if new_eip > self.vm.delivery.descriptor(new_segs[1]).limit:
                    raise GuestFault(GP, 0)
        except GuestFault as f:
            f.task_eip = new_eip
            raise
        clear_local_enables(mode)
        if not new_eflags & VM_BIT:
            vm.mode.on_vmm_branch(new_eip)
        uc.reg_write(_reg("eip"), new_eip)

    # -- parts ------------------------------------------------------------------------
    def _load_ldt(self, sel: int) -> None:
        if sel & SEL_TI:
            raise GuestFault(TS, sel & 0xFFFC)
        if sel & 0xFFFC == 0:
            self.vm.mode.set_guest_ldtr(0)
            return
        desc = self._descriptor(sel, TS, 0)
        if desc.access & (DESC_S | DESC_TYPE_MASK) != SYS_LDT or not desc.present:
            raise GuestFault(TS, sel & 0xFFFC)
        raise TaskSwitchUnsupported(f"a task switch loading an LDT (selector {sel:#x})")

    def _load_segments(self, segs: dict, eflags: int) -> None:
        """Load the new task's segments at the CPL its CS's RPL names, with the
        checks of a task switch (QEMU's tss_load_seg; the SDM's conforming rule),
        then its EFLAGS (the guest's view: set_guest_eflags after the CPL, so
        the deprivileged modes keep their real IOPL at the new ring)."""
        vm, mode, uc = self.vm, self.vm.mode, self.vm.uc
        cpl = segs["cs"] & 3
        descs = {}
        for name in LOAD_ORDER:
            sel = segs[name]
            if sel & 0xFFFC == 0:
                if name in ("cs", "ss"):
                    raise GuestFault(TS, 0)
                continue
            desc = self._descriptor(sel, TS, 0)
            rpl, dpl, err = sel & 3, desc.dpl, sel & 0xFFFC
            access = desc.access
            if not access & DESC_S:
                raise GuestFault(TS, err)
            if name == "cs":
                if not access & DESC_CODE:
                    raise GuestFault(TS, err)
                if (dpl > rpl) if access & DESC_CONFORMING else (dpl != rpl):
                    raise GuestFault(TS, err)
            elif name == "ss":
                if access & DESC_CODE or not access & DESC_RW or dpl != cpl or dpl != rpl:
                    raise GuestFault(TS, err)
            else:
                if access & DESC_CODE and not access & DESC_RW:
                    raise GuestFault(TS, err)
                if not (access & DESC_CODE and access & DESC_CONFORMING) and (dpl < cpl or dpl < rpl):
                    raise GuestFault(TS, err)
            if not desc.present:
                raise GuestFault(NP, err)
            descs[name] = desc
        if vm.guest_eflags() & VM_BIT:
            # Leaving a virtual-8086 task: protected-mode segment loads need VM clear first.
            vm.set_guest_eflags(vm.guest_eflags() & ~VM_BIT)
        vm.quirks.set_cpl(vm.ring_of(cpl))
        uc.reg_write(_reg("ss"), vm.real_selector(segs["ss"], cpl))
        mode.load_task_cs(vm.real_selector(segs["cs"], cpl))
        # Data segments keep the guest's own selector, as its `mov ds` does under
        # ring compression (the shadow GDT's DPL 1 admits an RPL-0 selector at
        # CPL 1; runtime/emulation.py _load_data_segment): an RPL 1 here showed
        # through `mov r, ds` (the fuzzer's `task` feature).
        for name in ("es", "ds", "fs", "gs"):
            uc.reg_write(_reg(name), segs[name])
        vm.set_guest_eflags((eflags & EFLAGS_LOADED) | 2)

    def _descriptor(self, sel: int, vector: int, ext: int) -> Descriptor:
        try:
            return self.vm.delivery.descriptor(sel)
        except GuestFault as f:
            if f.vector == GP:
                raise GuestFault(vector, (sel & 0xFFFC) + ext) from None
            raise

    def _gdt_address(self, sel: int) -> int:
        base, _ = self.vm.guest_gdtr()
        return base + (sel & SEL_INDEX_MASK)

    def _set_busy(self, sel: int, busy: bool) -> None:
        if sel & 0xFFFC == 0:
            return
        at = self._gdt_address(sel) + 5
        access = self._read(at, 1)[0]
        access = access | TSS_BUSY_BIT if busy else access & ~TSS_BUSY_BIT
        self._write(at, bytes([access]))
        self.vm.mode.on_gdt_changed_by_vmm()

    def _read(self, addr: int, n: int) -> bytes:
        try:
            return self.vm.mem.read_cpu(addr & 0xFFFFFFFF, n)
        except PageFault as pf:
            raise GuestFault(PF, pf.error_code, pf.linear) from None

    def _write(self, addr: int, data: bytes) -> None:
        try:
            self.vm.mem.push_cpu(addr & 0xFFFFFFFF, data)
        except PageFault as pf:
            raise GuestFault(PF, pf.error_code | PF_ERR_WRITE, pf.linear) from None

    def report(self) -> dict:
        """The run's task-switch figures (empty without one: other reports unchanged)."""
        return {k: v for k, v in self.switches.items() if v}


def _reg(name: str) -> int:
    from unicorn import x86_const as X
    return getattr(X, f"UC_X86_REG_{name.upper()}")
