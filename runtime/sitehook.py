"""A single-address code hook that may send the guest elsewhere.

The CPU model's checks (runtime/cpucheck.py) and the instruction breakpoints
(runtime/breakpoints.py) act at one instruction from a UC_HOOK_CODE callback:
deliver an exception or step past the instruction.  The callback returns the
EIP the guest goes on at (None: Unicorn runs the instruction).  `guarded`
re-syncs the PC after every hook, which would put the site back as this
exit's EIP, so the new EIP is written once more here (runtime/quirks.py
_find_pc_sync_flag); the flag it leaves is cleared before the next slice
(`before_slice`).
"""
from __future__ import annotations

from unicorn import x86_const as X


class RedirectingHook:
    """`at(address, size) -> EIP or None`, wrapped as a Unicorn code-hook callback."""

    def __init__(self, vm, at):
        self.vm = vm
        self._at = vm.guarded(at)
        self._redirected = False

    def __call__(self, uc, address, size, user):
        eip = self._at(uc, address, size, user)
        if eip is not None:
            self._redirected = True
            uc.reg_write(X.UC_X86_REG_EIP, eip)

    def before_slice(self) -> None:
        if self._redirected:
            self._redirected = False
            self.vm.quirks.resync_pc()
