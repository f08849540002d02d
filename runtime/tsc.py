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
inside the rdtsc helper).  The hooks are the instruction clock's C functions
(runtime/_clock.c, "Time-stamp counter"), which compute the value below with no
exit into Python: a Linux boot reads the TSC ~1.7 M times, which cost one
Python callback (a few microseconds) each before (issue 19).  Python callbacks
computing the same value remain for an engine whose live CPU state the quirks
calibration did not find (the C hooks read EIP there).
The CR4.TSD check happens in the helper *before* the hooks, so a user-mode
rdtsc with TSD set still raises #GP as on hardware; that is also why trap and
bt keep the real CR4.TSD equal to the guest's (runtime/trap.py): with it set a
ring-1 rdtsc would fault into Python.

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

    `vm` provides: uc, fast (FastUc), now(), clock, quirks.  `before_slice(base)`
    must be called with the virtual time at each slice's start (the native hooks
    add the position inside the slice).  Exceptions inside a Python callback are
    handed to `on_error` (the VM records them and stops the slice), never
    raised through the C frame."""

    def __init__(self, vm, on_error=None, offset: int = 0):
        self.vm = vm
        self.offset = offset
        self._reads = 0
        self._on_error = on_error
        self._fast = vm.fast
        self._clock = vm.clock
        env = vm.quirks.env
        self.native = env is not None
        if self.native:
            user = self._clock.enable_tsc(vm.quirks.off.eip)
            self.handles = [self._add(self._clock.rdtsc_cb, user, X.UC_X86_INS_RDTSC),
                            self._add(self._clock.rdtscp_cb, user, X.UC_X86_INS_RDTSCP)]
            return
        # The CFUNCTYPE objects must outlive the engine: keep them on self.
        self._cb_rdtsc = _INSN_CB(self._rdtsc)
        self._cb_rdtscp = _INSN_CB(self._rdtscp)
        self.handles = [self._add(ctypes.cast(self._cb_rdtsc, ctypes.c_void_p).value, None,
                                  X.UC_X86_INS_RDTSC),
                        self._add(ctypes.cast(self._cb_rdtscp, ctypes.c_void_p).value, None,
                                  X.UC_X86_INS_RDTSCP)]

    def _add(self, fn: int, user, insn: int) -> int:
        return hook_add(self.vm.uc, UC_HOOK_INSN, fn, user, 1, 0, ctypes.c_int(insn))

    def before_slice(self, vtime: int) -> None:
        if self.native:
            self._clock.set_tsc_base((vtime + self.offset) & 0xFFFFFFFFFFFFFFFF)
            self._clock.set_vtime_base(vtime)   # the clock's vtime_now (runtime/_iofast.c's PIT reads)

    @property
    def reads(self) -> int:
        """rdtsc/rdtscp reads answered (natively or by the Python callbacks)."""
        return self._reads + (self._clock.tsc_reads if self.native else 0)

    def value(self) -> int:
        return (self.vm.now() + self.offset) & 0xFFFFFFFFFFFFFFFF

    def _rdtsc(self, _uc, _user) -> int:
        try:
            self._reads += 1
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
