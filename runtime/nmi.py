"""NMI blocking of the one CPU: when an NMI may be taken, and when blocking ends.

The CPU takes a pending NMI (runtime/devices/intc.py `has_nmi`; the local APIC
latches one at most) at the next instruction boundary whatever EFLAGS.IF says,
through IDT vector 2, and from then on blocks further NMIs until the next
`iret` completes (SDM 6.7.1, "Handling Multiple NMIs"); an NMI sent
meanwhile stays pending and is taken at the boundary right after that iret.

Unicorn runs the guest's iret natively under emulate and trap (at CPL 1 it is
native too) and bt turns a kernel's iretd into a stub that ends with popfd and
an indirect jump (patcher/templates.py `_iretd`), or into an exit the VMM
emulates: no single event reports every iret.  So while NMIs are blocked --
only while an NMI handler runs -- the VM runs one-instruction slices
(`slice_limit`), and before each asks whether the guest instruction about to
run is an iret (`_at_iret`: the guest address the mode maps the real EIP to,
its bytes as the guest wrote them, bt's patches hidden); when the slice ran
and the guest left that instruction, blocking ends.  That is exact at
instruction boundaries in every mode; it costs one slice per instruction of an
NMI handler (`steps` in the report's `nmi` figures, present only for a run
that took an NMI), nothing for a guest that sends no NMI.

Not exact (docs/devices.md, "NMI"): an iret that faults ends blocking here
(the SDM leaves it to the model), and a `mov ss` / `sti` shadow holds back an
NMI here as it holds back an interrupt (runtime/modes.py `may_inject`).
"""
from __future__ import annotations

from bt.x86 import NMI

# Prefixes an iret may carry (operand size, address size, segments, lock, rep).
_PREFIXES = frozenset(b"\x66\x67\x26\x2e\x36\x3e\x64\x65\xf0\xf2\xf3")
_IRET = 0xCF
_MAX_INSN = 15


class NMIGate:
    """The CPU's NMI state for one VM: `blocked` from an NMI's delivery to the
    completion of the next iret."""

    def __init__(self, vm):
        self.vm = vm
        self.blocked = False
        self._iret_at: int | None = None    # guest address of the iret this step runs
        self.taken = self.steps = self.unblocks = 0

    # -- injection -------------------------------------------------------------------
    def deliverable(self) -> bool:
        return not self.blocked and self.vm.pic.has_nmi()

    def take(self) -> int:
        """The CPU takes the pending NMI: blocking starts; the vector to deliver."""
        self.vm.pic.take_nmi()
        self.blocked = True
        self.taken += 1
        return NMI

    # -- watching for the iret that ends blocking -------------------------------------------
    def slice_limit(self) -> int | None:
        return 1 if self.blocked or self.vm.pic.has_nmi() else None

    def before_slice(self) -> None:
        self._iret_at = None
        if self.blocked:
            self.steps += 1
            where = self._guest_eip()
            if self._at_iret(where):
                self._iret_at = where

    def after_slice(self) -> None:
        if self._iret_at is not None and self._guest_eip() != self._iret_at:
            self.blocked = False
            self.unblocks += 1
        self._iret_at = None

    def iret_completed(self) -> None:
        """An iret the VMM finished after the slice ended (runtime/taskreturn.py:
        the slice's own check saw the guest still at it)."""
        if self.blocked:
            self.blocked = False
            self.unblocks += 1

    def report(self) -> dict:
        """The run's NMI figures (empty without an NMI: other reports unchanged)."""
        if not self.taken:
            return {}
        return {"taken": self.taken, "steps": self.steps, "unblocks": self.unblocks,
                "blocked_at_end": self.blocked}

    def _guest_eip(self) -> int:
        return self.vm.mode.guest_address(self.vm.quirks.eip())

    def _at_iret(self, eip: int) -> bool:
        linear = self.vm.code_base() + eip
        for i in range(_MAX_INSN):          # byte by byte: the next page may be absent
            code = self.vm.mode.code_at(linear + i, 1)
            if not code:
                return False
            if code[0] not in _PREFIXES:
                return code[0] == _IRET
        return False
