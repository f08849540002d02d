"""The VM's interrupt hook, native (runtime/_exits.c), with the VM's Python
handler as its fallback.

Every exit that reaches Python costs the binding's callback, the guarded
wrapper and the mode's dispatch (about 12 us on this machine, measured on
Debian's kernel under trap: docs/benchmarks.md, "Exit cost under paging").
The native hook answers the exits whose answer is fixed and frequent,
`invlpg` at the guest kernel's CPL 1 (trap and bt: `enable_invlpg`), exactly as
the Python path would (runtime/emulation.py `_invlpg`), and `mov cr3, r32`
under two-level paging whose hypervisor-area slot only moves
(`enable_mov_cr3`; runtime/trap.py `write_cr`, runtime/paging.py), and passes
every other interrupt to the Python handler unchanged.  Its counts reach the run's counters
at the end of each slice (`drain`), so they are exact between slices.
"""
from __future__ import annotations

import ctypes

from unicorn import UC_HOOK_INTR
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from runtime import _clock, _exits
from runtime.fastuc import TLB_FLUSH, hook_add

_INTR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)


def _addr(f) -> int:
    return ctypes.cast(f, ctypes.c_void_p).value


class NativeExits:
    def __init__(self, vm, handler):
        """`handler(uc, intno, user)`: the VM's guarded Python interrupt hook."""
        uc, q = vm.uc, vm.quirks
        self._fallback = _INTR(lambda _h, intno, _u: handler(uc, intno, None))     # kept alive
        off = q.off
        self.x = _exits.Exits(_addr(self._fallback), _addr(uclib.uc_reg_write), _addr(uclib.uc_ctl),
                              X.UC_X86_REG_EIP, TLB_FLUSH, _clock.cut_address(), id(vm.clock.c), q.env,
                              q.pc_sync_address(),
                              (off.hflags, off.is_int, off.error_code, off.old_exception, off.eip,
                               *off.cr, off.efer),
                              vm._ram_ptr, vm.config.mem_bytes)
        hook_add(uc, UC_HOOK_INTR, _exits.hook_address(), id(self.x), 1, 0)

    def enable_invlpg(self) -> None:
        self.x.invlpg = True

    def enable_mov_cr3(self) -> None:
        """`mov cr3, r32` at CPL 1 under two-level paging, answered as
        runtime/trap.py `write_cr(3)` does while the area's directory slot
        (runtime/paging.py publishes it here: `x.slot`) needs nothing but moving."""
        gprs = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX,
                X.UC_X86_REG_ESP, X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI)
        self.x.enable_mov_cr3(_addr(uclib.uc_reg_read), gprs, X.UC_X86_REG_CR3)

    def arm(self, on: bool) -> None:
        """Off once the run's end is decided: the Python handler then sees every
        interrupt (it ends the block there, runtime/vm.py `_on_interrupt`)."""
        self.x.armed = on

    def drain(self, counters, guest_address) -> None:
        """Add the natively handled exits to the run's counters, as the Python
        path counts them (runtime/vm.py exit_site, runtime/trap.py on_fault)."""
        for eip, n, mnemonic in self.x.take_counts():
            if n:
                counters.add("exits", n=n)
                counters.add("exit_sites", guest_address(eip), n)
                counters.add("faults_emulated", mnemonic, n)
