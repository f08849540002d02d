"""The virtual time-stamp counter: rdtsc/rdtscp answer from virtual time, not the host.

Unicorn's rdtsc helper reads the *host's* TSC (cpu_get_ticks), so a guest that
looks at the TSC -- Linux calibrates it, prints timestamps with it, mixes it into
its entropy pool -- would behave differently on every run.  libunicorn 2.1.4 does
call UC_HOOK_INSN hooks registered for UC_X86_INS_RDTSC / UC_X86_INS_RDTSCP from
inside its rdtsc/rdtscp helpers (a callback that returns 1 replaces the native
read), only the Python binding refuses to register them (its UcIntel.hook_add
maps IN/OUT/SYSCALL/SYSENTER/CPUID only and raises UC_ERR_ARG otherwise).  So
the hook is registered here through libunicorn's own `uc_hook_add`.

Cost: nothing on instructions that are not rdtsc (the hook list is walked only
inside the rdtsc helper), one Python callback (a few microseconds) per rdtsc.
The CR4.TSD check happens in the helper *before* the hooks, so a user-mode
rdtsc with TSD set still raises #GP as on hardware.

The model: one TSC tick per retired guest instruction (the TSC runs at the
virtual clock `cpu_hz`), `TSC = vtime + offset`.  `vtime` at the instruction
is exact because the VM's slices count instructions (VM.now()).  rdtscp also
returns IA32_TSC_AUX (0: one CPU) in ECX.  The cpuid model does not advertise
RDTSCP; if a guest uses it anyway it gets the same virtual counter rather than
the host's.  RDMSR of IA32_TSC (0x10) still reads the host counter (Unicorn has
no rdmsr hook); no guest we run reads the TSC that way.
"""
from __future__ import annotations

import ctypes

from unicorn import UC_HOOK_INSN
from unicorn import x86_const as X

from runtime.fastuc import hook_add

# int callback(uc_engine *uc, void *user_data): nonzero = "handled, skip the native read"
_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)

TSC_AUX = 0


class VirtualTSC:
    """Installs the rdtsc/rdtscp hooks on `vm.uc`; the counter is `vm.now() + offset`.

    `vm` provides: uc, fast (FastUc), now(), counters.  Exceptions inside the
    callback are handed to `on_error` (the VM records them and stops the slice),
    never raised through the C frame."""

    def __init__(self, vm, on_error=None, offset: int = 0):
        self.vm = vm
        self.offset = offset
        self.reads = 0
        self._on_error = on_error
        self._fast = vm.fast
        # The CFUNCTYPE objects must outlive the engine: keep them on self.
        self._cb_rdtsc = _INSN_CB(self._rdtsc)
        self._cb_rdtscp = _INSN_CB(self._rdtscp)
        self.handles = [self._add(self._cb_rdtsc, X.UC_X86_INS_RDTSC),
                        self._add(self._cb_rdtscp, X.UC_X86_INS_RDTSCP)]

    def _add(self, cb, insn: int) -> int:
        return hook_add(self.vm.uc, UC_HOOK_INSN, ctypes.cast(cb, ctypes.c_void_p).value,
                        None, 1, 0, ctypes.c_int(insn))

    def value(self) -> int:
        return (self.vm.now() + self.offset) & 0xFFFFFFFFFFFFFFFF

    def _rdtsc(self, _uc, _user) -> int:
        try:
            self.reads += 1
            v = self.value()
            self._fast.reg_write(X.UC_X86_REG_EAX, v & 0xFFFFFFFF)
            self._fast.reg_write(X.UC_X86_REG_EDX, v >> 32)
        except BaseException as e:  # never let an exception unwind through C
            if self._on_error is not None:
                self._on_error(e)
        return 1

    def _rdtscp(self, _uc, _user) -> int:
        r = self._rdtsc(_uc, _user)
        try:
            self._fast.reg_write(X.UC_X86_REG_ECX, TSC_AUX)
        except BaseException as e:
            if self._on_error is not None:
                self._on_error(e)
        return r
