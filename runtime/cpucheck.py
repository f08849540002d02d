"""The CPU model's #GP under emulate, where Unicorn runs the instruction itself.

At CPL 0 Unicorn 2.1.4 executes rdmsr, wrmsr and `mov cr4` with no check: an
unknown MSR reads 0, FS_BASE/GS_BASE/KERNEL_GS_BASE of its x86-64 build take
effect (the next FS access uses the 64-bit base), any CR4 value is taken.  A
32-bit P6 raises #GP(0) for all of these (runtime/cpuid.py `MSRS`,
`CR4_IMPLEMENTED`).  Under trap and bt the guest kernel runs at CPL 1, so the
same instructions fault and runtime/emulation.py applies the model; this module
gives emulate the same answers.

How, without a hook on every instruction: the instruction clock decodes every
block before it first runs (runtime/_clock.c) and puts each rdmsr, wrmsr and
`mov cr4, r32` on the block's fix list, as it does cmpxchg8b and smsw; the
slice stops before such a block until the site has a hook, and `install`
gives it a single-address code hook (runtime/clock.py `fix_model_sites`).
The hook decides from ECX or the source register whether the model faults;
if so the VMM delivers #GP(0) at the site, as trap's exit does.  rdmsr/wrmsr
of the APIC base MSR (0x1B) the hook performs itself: the local APIC holds it
(docs/devices.md).  This replaced a Python UC_HOOK_EDGE_GENERATED callback on
every newly translated block: Debian's kernel to 150 M instructions
(`--linux-unpack`) spent ~11% of its CPU time there (57,519 callbacks in the
boot to the init marker).
"""
from __future__ import annotations

import capstone
from unicorn import UC_HOOK_CODE
from unicorn import x86_const as X

from bt.x86 import GP
from runtime import cpuid as model
from runtime.decode import decode
from runtime.devices.regs import MSR_APIC_BASE
from runtime.emulation import write_apic_base
from runtime.sitehook import RedirectingHook

_LITE = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def sites_in(code: bytes, addr: int) -> list[int]:
    """Addresses of rdmsr, wrmsr and `mov cr4, r32` in `code` (decoded from its start)."""
    return [a for a, _, mnem, ops in _LITE.disasm_lite(code, addr)
            if mnem in ("rdmsr", "wrmsr") or (mnem == "mov" and ops.startswith("cr4,"))]


class ModelCheck:
    """One per emulate VM (runtime/modes.py EmulateMode)."""

    def __init__(self, vm):
        self.vm = vm
        self.hooked: set[int] = set()
        # sends the guest to the #GP handler or past the instruction (runtime/sitehook.py)
        self._site_hook = RedirectingHook(vm, self._at_site)
        vm.clock.fix_model_sites(self.install)

    def install(self, site: int) -> bool:
        """Hook `site` (linear) when it holds rdmsr, wrmsr or `mov cr4, r32`
        (called by the clock before the block holding it first runs)."""
        code = self.vm.mem.try_read(site, 15)
        if not code or not sites_in(code[:15], site)[:1] == [site]:
            return False
        self.vm.uc.hook_add(UC_HOOK_CODE, self._site_hook, None, site, site)
        self.hooked.add(site)
        return True

    def before_slice(self) -> None:
        self._site_hook.before_slice()

    def _at_site(self, address: int, size: int) -> int | None:
        """The EIP the guest goes on at, or None: Unicorn runs the instruction."""
        vm = self.vm
        insn = decode(vm.mem.try_read(address, 15) or b"")
        if insn is None:
            return None
        action = self._action(insn)
        if action is None:
            return None                     # Unicorn runs it
        vm.clock.cut(address, True, linear=True)   # started, as a fault's is
        vm.exit_site(address)
        vm.halt_slice()
        if action == "apic" and self._apic_base(insn):
            return address + insn.size
        vm.deliver_exception(GP, address, 0)    # a triple fault ends the run here (StopSlice)
        return vm.uc.reg_read(X.UC_X86_REG_EIP)

    def _action(self, insn) -> str | None:
        """None: the model agrees with Unicorn; "gp": #GP(0); "apic": the APIC
        base MSR, which the local APIC holds (Unicorn reads 0, ignores writes)."""
        uc = self.vm.uc
        if insn.mnemonic in ("rdmsr", "wrmsr"):
            msr = uc.reg_read(X.UC_X86_REG_ECX)
            if msr == MSR_APIC_BASE:
                return "apic"
            if insn.mnemonic == "rdmsr":
                return None if model.msr_implemented(msr) else "gp"
            value = (uc.reg_read(X.UC_X86_REG_EDX) << 32) | uc.reg_read(X.UC_X86_REG_EAX)
            return None if model.wrmsr_allowed(msr, value) else "gp"
        if insn.mnemonic == "mov" and insn.operands and insn.operands[0].kind == "cr" \
                and insn.operands[0].reg == 4 and insn.operands[1].kind == "reg":
            return None if model.cr4_allowed(uc.reg_read(insn.operands[1].reg)) else "gp"
        return None

    def _apic_base(self, insn) -> bool:
        """rdmsr/wrmsr 0x1B done here; False = a refused write (#GP)."""
        uc = self.vm.uc
        if insn.mnemonic == "rdmsr":
            value = self.vm.devices["lapic"].base_msr
            uc.reg_write(X.UC_X86_REG_EAX, value & 0xFFFFFFFF)
            uc.reg_write(X.UC_X86_REG_EDX, value >> 32)
            return True
        value = (uc.reg_read(X.UC_X86_REG_EDX) << 32) | uc.reg_read(X.UC_X86_REG_EAX)
        return write_apic_base(self.vm, value)
