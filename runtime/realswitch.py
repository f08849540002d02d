"""Real mode under trap and bt: the guest runs natively at real CPL 0 while it
has left protected mode, and goes back to ring 1 once it is safely back.

Ring compression has no meaning with CR0.PE clear: real mode has no
descriptors, no rings, and an `int n` vectors through the IVT.  VirtualBox fell
back to its recompiler there; here the recompiler is Unicorn at real CPL 0, the
way emulate runs every guest.  So a guest `mov cr0` (or lmsw cannot: it never
clears PE) that clears PE, which faults at CPL 1 and is emulated, *enters* the
native stretch (`enter`): the real CR0 becomes the guest's, the real GDTR and
IDTR the guest's own tables, the real IOPL the guest's, and the CPL 0.  From
then on the mode answers every question about the guest's view as emulate does
(`active`), the VMM delivers interrupts through the IVT (runtime/realmode.py),
and the guest's own lgdt, lidt, mov cr0 (setting PE again), far jumps and
segment loads run in Unicorn as under emulate.

The stretch ends (`leave`) at the first slice boundary at which the guest is
back in protected mode with CS and SS holding protected-mode selectors (after
its far jump and stack load): the control registers, GDTR, IDTR, TR and IOPL
the guest loaded natively go into the virtual CPU, the shadow GDT is rebuilt
from the guest's table, and the guest continues at ring 1 with its selectors
reloaded from the shadow.  While the stretch lasts slices are at most
`NATIVE_SLICE` instructions long, so a guest back in protected mode runs at
most that many instructions at real CPL 0 (what it does there is what it does
under emulate: the hypervisor area's guard, runtime/isolation.py, does not
depend on the CPL).

Not modelled (docs/machine.md, "Real mode"): between the emulated `mov cr0`
and the guest's far jump, `mov r, cs`/`mov r, ss` show the ring-1 selector
(RPL 1) trap had loaded; a data segment register that still holds a real-mode
value at the boundary where the stretch ends is reloaded from the GDT (the CPU
keeps its real-mode base until the guest reloads it).
"""
from __future__ import annotations

from unicorn import x86_const as X

from bt.hyper_layout import SHADOW_IDT, VFLAGS_MASK
from bt.x86 import CR0_PE, DESC_CODE, DESC_S, DESC_SIZE, SEL_INDEX_MASK, SEL_TI
from runtime.delivery import Descriptor

NATIVE_SLICE = 20_000
_DATA_REGS = (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS)


class RealModeSwitch:
    """One per trap/bt mode (runtime/trap.py)."""

    def __init__(self, mode):
        self.mode = mode
        self.uc = mode.uc
        self.active = False
        self.entries = self.exits = 0
        self._vmm_tr = None         # the real TR (the VMM's TSS) while the stretch lasts

    def enter(self, cr0: int) -> None:
        """The guest cleared PE (an emulated `mov cr0` at CPL 1)."""
        mode, uc, v = self.mode, self.uc, self.mode.vcpu
        flags = mode.guest_eflags()             # the guest's IOPL, from vflags
        gbase, glimit = v.gdtr()
        ibase, ilimit = v.idtr()
        self.active = True
        self.entries += 1
        self._vmm_tr = uc.reg_read(X.UC_X86_REG_TR)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, gbase, glimit, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, ibase, ilimit, 0))
        uc.reg_write(X.UC_X86_REG_CR0, cr0)
        uc.reg_write(X.UC_X86_REG_EFLAGS, flags)
        mode.vm.quirks.set_cpl(0)
        mode.stop_slice = True      # the slice ends after the mov cr0: the next is bounded

    def ready_to_leave(self) -> bool:
        """Back in protected mode, CS a code and SS a data selector of the GDT."""
        uc = self.uc
        if not uc.reg_read(X.UC_X86_REG_CR0) & CR0_PE:
            return False
        return self._kind(uc.reg_read(X.UC_X86_REG_CS)) == "code" and \
            self._kind(uc.reg_read(X.UC_X86_REG_SS)) == "data"

    def leave(self) -> None:
        mode, uc, v = self.mode, self.uc, self.mode.vcpu
        _, gbase, glimit, _ = uc.reg_read(X.UC_X86_REG_GDTR)
        _, ibase, ilimit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
        tr = uc.reg_read(X.UC_X86_REG_TR)[0]
        flags = uc.reg_read(X.UC_X86_REG_EFLAGS)
        crs = {n: uc.reg_read(getattr(X, f"UC_X86_REG_CR{n}")) for n in (0, 3, 4)}
        self.active = False
        self.exits += 1
        v.set("idtr", ilimit, ibase)
        uc.reg_write(X.UC_X86_REG_IDTR, (0, mode.hyper.addr(SHADOW_IDT), 0x7FF, 0))
        if tr != self._vmm_tr[0]:               # the guest's own ltr at CPL 0
            v.set("tr", tr)
        uc.reg_write(X.UC_X86_REG_TR, self._vmm_tr)
        for n in (4, 3, 0):
            mode.write_cr(n, crs[n])
        mode.load_gdt(gbase, glimit)            # the shadow, then the real GDTR
        v.vflags = flags & VFLAGS_MASK
        mode.vm.quirks.set_cpl(1)
        uc.reg_write(X.UC_X86_REG_SS, uc.reg_read(X.UC_X86_REG_SS) | 1)
        mode.load_far(X.UC_X86_REG_CS, uc.reg_read(X.UC_X86_REG_CS) | 1)
        for r in _DATA_REGS:
            uc.reg_write(r, uc.reg_read(r))
        mode._write_real_flags(flags)

    def _kind(self, sel: int) -> str | None:
        index = sel & SEL_INDEX_MASK
        _, base, limit, _ = self.uc.reg_read(X.UC_X86_REG_GDTR)
        if not index or sel & SEL_TI or index + DESC_SIZE - 1 > limit:
            return None
        raw = self.mode.vm.mem.try_read(base + index, DESC_SIZE)
        if raw is None:
            return None
        d = Descriptor.parse(raw)
        if not d.present or not d.access & DESC_S:
            return None
        return "code" if d.access & DESC_CODE else "data"
