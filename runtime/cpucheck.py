"""The CPU model's #GP under emulate, where Unicorn runs the instruction itself.

At CPL 0 Unicorn 2.1.4 executes rdmsr, wrmsr and `mov cr4` with no check: an
unknown MSR reads 0, FS_BASE/GS_BASE/KERNEL_GS_BASE of its x86-64 build take
effect (the next FS access uses the 64-bit base), any CR4 value is taken.  A
32-bit P6 raises #GP(0) for all of these (runtime/cpuid.py `MSRS`,
`CR4_IMPLEMENTED`).  Under trap and bt the guest kernel runs at CPL 1, so the
same instructions fault and runtime/emulation.py applies the model; this module
gives emulate the same answers.

How, without a hook on every instruction: Unicorn reports each newly
translated block to UC_HOOK_EDGE_GENERATED (its QEMU's
`tb_find`; not the very first block of a run, which has no predecessor: the
entry page is looked at in `boot`).  A block whose bytes hold 0F 30 / 0F 32 /
0F 22 is decoded; each rdmsr, wrmsr and `mov cr4, r32` site found gets a
single-address code hook, and the slice stops before the block runs, so the
block is translated again with the hook in it (`before_slice`).  The hook
decides from ECX or the source register whether the model faults; if so the
VMM delivers #GP(0) at the site, as trap's exit does.  rdmsr/wrmsr of the
APIC base MSR (0x1B) the hook performs itself: the local APIC holds it
(docs/devices.md).  Measured on Debian's
kernel under emulate (`--max-instructions 60000000`): 7,714 blocks reported,
10 of them with a candidate byte pair, CPU time within the run-to-run noise.
"""
from __future__ import annotations

import capstone
from unicorn import UC_HOOK_CODE, UC_HOOK_EDGE_GENERATED
from unicorn import x86_const as X

from bt.x86 import GP, PAGE
from runtime import cpuid as model
from runtime.decode import decode
from runtime.devices.regs import MSR_APIC_BASE
from runtime.emulation import write_apic_base

_LITE = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_CANDIDATES = (b"\x0f\x30", b"\x0f\x32", b"\x0f\x22")


def sites_in(code: bytes, addr: int) -> list[int]:
    """Addresses of rdmsr, wrmsr and `mov cr4, r32` in `code` (decoded from its start)."""
    return [a for a, _, mnem, ops in _LITE.disasm_lite(code, addr)
            if mnem in ("rdmsr", "wrmsr") or (mnem == "mov" and ops.startswith("cr4,"))]


class ModelCheck:
    """One per emulate VM (runtime/modes.py EmulateMode)."""

    def __init__(self, vm):
        self.vm = vm
        self.hooked: set[int] = set()
        self.pending: set[int] = set()
        self._redirect: int | None = None       # where a site hook sent the guest (#GP handler, next insn)
        vm.uc.hook_add(UC_HOOK_EDGE_GENERATED, vm.guarded(self._on_new_block))
        checked = vm.guarded(self._at_site)

        def site_hook(uc, address, size, user):
            self._redirect = None
            checked(uc, address, size, user)
            if self._redirect is not None:
                # `guarded` re-syncs the PC after every hook, which would put the
                # site back as this exit's EIP; writing EIP once more
                # keeps the handler's (runtime/quirks.py _find_pc_sync_flag).
                # The flag is cleared before the next slice (before_slice).
                uc.reg_write(X.UC_X86_REG_EIP, self._redirect)
        self._site_hook = site_hook

    def boot(self, entry: int) -> None:
        """The run's first block is reported to no edge hook: hook the sites of
        the entry's page (a superset of that block: an extra hook costs nothing)."""
        code = self.vm.mem.try_read(entry, PAGE - (entry & (PAGE - 1)))
        if code and any(c in code for c in _CANDIDATES):
            self.pending.update(sites_in(code, entry))
        self.before_slice()

    def _on_new_block(self, cur, prev) -> None:
        code = self.vm.mem.try_read(cur.pc, cur.size)
        if not code or not any(c in code for c in _CANDIDATES):
            return
        new = set(sites_in(code, cur.pc)) - self.hooked
        if new:
            # The block was translated without the hook: stop before it runs
            # (the exit request is checked at the block's start) and let it be
            # translated again once the hook exists.
            self.pending |= new
            self.vm.halt_slice()

    def before_slice(self) -> None:
        uc = self.vm.uc
        if self._redirect is not None:
            self._redirect = None
            self.vm.quirks.resync_pc()
        for site in sorted(self.pending):
            uc.hook_add(UC_HOOK_CODE, self._site_hook, None, site, site)
            uc.ctl_remove_cache(site, site + 1)
            self.hooked.add(site)
        self.pending.clear()

    def _at_site(self, address: int, size: int) -> None:
        vm = self.vm
        insn = decode(vm.mem.try_read(address, 15) or b"")
        if insn is None:
            return
        action = self._action(insn)
        if action is None:
            return                          # Unicorn runs it
        vm.clock.cut(address, True, linear=True)   # started, as a fault's is
        vm.exit_site(address)
        vm.halt_slice()
        if action == "apic" and self._apic_base(insn):
            self._redirect = address + insn.size
            return
        vm.deliver_exception(GP, address, 0)    # a triple fault ends the run here (StopSlice)
        self._redirect = vm.uc.reg_read(X.UC_X86_REG_EIP)

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
