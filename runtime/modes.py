"""Execution modes as configurations of the one VM (runtime/vm.py).

A mode answers the questions where deprivileging changes the answer: which ring
the guest believes it is in, what it believes EFLAGS and its descriptor tables
are, and what to do with a fault before it is reflected to the guest.
`EmulateMode` is pure emulation (the guest's beliefs are the CPU's truth) and
the base the deprivileged modes extend (runtime/trap.py, runtime/bt.py).  The
mode *names* are `bt.mode.Mode`.
"""
from __future__ import annotations

from unicorn import x86_const as X

from bt.errors import VMMError
from bt.x86 import CR0_PE, VM_BIT


class StopSlice(Exception):
    """Raised inside a hook: end the current emulation slice after this exit."""


class EmulateMode:
    name = "emulate"

    # The guest kernel at real CPL 0: Unicorn runs rdmsr/wrmsr/mov cr4 itself,
    # so the CPU model's #GP needs runtime/cpucheck.py (trap and bt: False,
    # their CPL 1 makes the instructions fault into runtime/emulation.py).
    runs_at_cpl0 = True

    def __init__(self, vm):
        self.vm = vm
        self.uc = vm.uc
        self.model_check = None
        self.rf_breakpoints = None
        if self.runs_at_cpl0:
            from runtime.breakpoints import RFBlockBreakpoints
            from runtime.cpucheck import ModelCheck
            self.model_check = ModelCheck(vm)
            self.rf_breakpoints = RFBlockBreakpoints(vm)

    # -- setup and hooks ------------------------------------------------------
    def boot(self) -> None:
        """Called once the image is loaded and the boot state written."""

    def pc_for(self, eip: int) -> int:
        return eip

    # The guest's IF is the CPU's: the clock stops where it rises while an
    # interrupt waits (runtime/_clock.c, "Interrupt window").  So it is in trap
    # and bt (the guest's IF in the real EFLAGS, real IOPL 1 at CPL 1).
    watches_irq_window = True

    def window_watch_here(self) -> bool:
        """May the window check stop the slice that starts at the current EIP?"""
        return True

    def may_inject(self) -> bool:
        # Not inside an sti / mov-ss shadow: the CPU takes the interrupt one
        # instruction later (the window check then stops after it).
        return not self.vm.quirks.irq_inhibited()

    def before_slice(self) -> None:
        """Called before every emulation slice, outside any hook."""
        if self.model_check is not None:
            self.model_check.before_slice()
        if self.rf_breakpoints is not None:
            self.rf_breakpoints.before_slice()

    def host_regions(self) -> list[tuple[int, int, int]]:
        """(base, size, host address) of mode-owned memory that may hold code."""
        return []

    def claims_error(self, err) -> bool:
        """True when a Unicorn error that ended the slice was the mode's own doing."""
        return False

    def slice_limit(self) -> int | None:
        """An upper bound for the next slice (e.g. 1 inside an sti shadow)."""
        return None

    def retries_fault(self, vector: int, error: int | None = None) -> bool:
        """A fault the VMM caused and repaired: the instruction runs again, the
        fault uncounted (before `on_fault`; runtime/trap.py)."""
        return False

    def on_fault(self, vector: int, eip: int, error: int | None, soft: bool) -> bool:
        """Handle a fault the mode itself caused; False = reflect it to the guest."""
        return False

    def on_invalid_opcode(self, eip: int) -> bool:
        return False

    def on_unexpected_stop(self, eip: int) -> None:
        """Unicorn ended a slice early on its own: at CPL 0 that is `hlt`."""
        if self.vm.mem.try_read(self.vm.code_base() + eip - 1, 1) == b"\xf4":   # CS base: real mode
            self.vm.on_hlt()
            return
        raise VMMError(f"emulation stopped unexpectedly at {eip:#x}")

    # -- the guest's view ------------------------------------------------------
    def guest_cpl(self) -> int:
        if self.uc.reg_read(X.UC_X86_REG_EFLAGS) & VM_BIT:    # V86 code runs at CPL 3
            return 3
        return self.uc.reg_read(X.UC_X86_REG_CS) & 3

    def ring_of(self, guest_ring: int) -> int:
        return guest_ring

    def real_mode(self) -> bool:
        """The guest's CR0.PE is clear (runtime/realmode.py)."""
        return not self.uc.reg_read(X.UC_X86_REG_CR0) & CR0_PE

    def guest_selector(self, real_sel: int) -> int:
        return real_sel

    def real_selector(self, guest_sel: int, guest_ring: int) -> int:
        return guest_sel

    def guest_eflags(self) -> int:
        return self.uc.reg_read(X.UC_X86_REG_EFLAGS)

    def set_guest_eflags(self, value: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_EFLAGS, value)

    def guest_gdtr(self) -> tuple[int, int]:
        _, base, limit, _ = self.uc.reg_read(X.UC_X86_REG_GDTR)
        return base, limit

    def guest_idtr(self) -> tuple[int, int]:
        _, base, limit, _ = self.uc.reg_read(X.UC_X86_REG_IDTR)
        return base, limit

    def guest_tr_base(self) -> int | None:
        sel, base, _, _ = self.uc.reg_read(X.UC_X86_REG_TR)
        return base if sel else None

    # -- what a task switch reads and loads (runtime/taskswitch.py) ---------------------
    def guest_tr(self) -> tuple[int, int, int, int]:
        """The guest's TR: selector, base, limit, access byte."""
        sel, base, limit, flags = self.uc.reg_read(X.UC_X86_REG_TR)
        return sel, base, limit, (flags >> 8) & 0xFF

    def set_guest_tr(self, sel: int, base: int, limit: int, access: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_TR, (sel, base, limit, access << 8))

    def set_guest_ldtr(self, sel: int) -> None:
        """Only the null LDT is loaded by the VMM (it models no LDT)."""
        self.uc.reg_write(X.UC_X86_REG_LDTR, (sel, 0, 0, 0))

    def read_cr(self, n: int) -> int:
        return self.uc.reg_read(getattr(X, f"UC_X86_REG_CR{n}"))

    def write_cr(self, n: int, value: int) -> None:
        # At CPL 0 the engine's own register: a CR3 write flushes its TLB as
        # `mov cr3` does (tests/runtime/test_unicorn_paging_facts.py).
        self.uc.reg_write(getattr(X, f"UC_X86_REG_CR{n}"), value & 0xFFFFFFFF)

    def load_task_cs(self, real_sel: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_CS, real_sel)

    def on_gdt_changed_by_vmm(self) -> None:
        """The VMM stored into the guest's GDT (a TSS busy bit)."""

    def guest_address(self, eip: int) -> int:
        """The guest address an exit at `eip` belongs to (bt maps stub addresses back)."""
        return eip

    def code_at(self, linear: int, n: int) -> bytes | None:
        """The guest's code at `linear` as it wrote it (the VMM's read: no
        accessed bits; None if unreadable); runtime/nmi.py finds irets by it."""
        return self.vm.mem.try_read(linear, n)

    def on_vmm_branch(self, target: int) -> None:
        """The VMM is about to send the guest to `target` (an IDT handler, an
        emulated iret/far call): bt scans it first if it was never scanned."""

    def on_irq_state(self) -> None:
        """A device access may have changed whether an interrupt is pending."""

    def guest_regs(self, regs: dict) -> dict:
        return regs

    def extra_report(self) -> dict:
        return {}

