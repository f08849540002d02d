"""Instruction breakpoints (DR0-DR3, DR7) under trap and bt.

Under emulate the guest's `mov drN` runs in Unicorn at CPL 0, whose QEMU arms
its own breakpoints (`cpu_x86_update_dr7`): an enabled execute breakpoint
raises #DB, a fault at the instruction, with DR6.Bn set.  Under trap and bt
the guest kernel runs at CPL 1, its `mov drN` faults and the VMM keeps the
debug registers in the virtual CPU (runtime/emulation.py): Unicorn's own
breakpoints are never armed (its reg_write of DR7 stores the value and arms
nothing: tests/runtime/test_breakpoints.py), so before this module no
breakpoint ever fired there.

Here every enabled execute breakpoint (DR7 L or G bit, R/W = 00) gets a
single-address code hook at its linear address; the hook raises #DB as the
CPU does, unless
* EFLAGS.RF was set as the instruction started (the clock clears RF at the
  start of the block after an iret and records where: `clock.rf_at`), or
* the instruction follows a MOV SS / POP SS (an Intel CPU, which the CPU
  model is, suppresses the breakpoint there; emulate does the same in
  runtime/vm.py `_on_interrupt`).
DR6 gets Bn for every execute breakpoint at the address (QEMU's rule).  The
hook is placed and removed when the guest writes DR0-DR3 or DR7, and the
translated blocks holding the address are dropped so that the hook takes
effect.  Under bt an instruction a jump patch covers after its first runs as
the stub's copy: that copy gets the hook too (`refresh`, again whenever
patches change), and the #DB names the guest's address.

A task switch clears DR7's local enables L0-L3 (`clear_local_enables`, as
QEMU's switch_tss does for emulate's native far jmp/call/iret to a task).

Not modelled under trap and bt: data breakpoints (R/W = 01, 11) and I/O
breakpoints (10), general detect (DR7.GD); docs/fidelity.md "Debug registers".
"""
from __future__ import annotations

from unicorn import UC_HOOK_CODE
from unicorn import x86_const as X

from bt.catalog import SHADOW_OPENERS
from bt.x86 import DB
from runtime.decode import decode
from runtime.sitehook import RedirectingHook

DR6_HITS = 0xF
DR7_LOCAL_ENABLES = 0x55        # L0-L3


_ENGINE_DRS = tuple(getattr(X, f"UC_X86_REG_DR{n}") for n in range(8))


def engine_drs(uc) -> list[int]:
    """DR0-DR7 as Unicorn holds them (emulate: the guest's own)."""
    return [uc.reg_read(r) for r in _ENGINE_DRS]


def exec_breakpoints(drs) -> set[int]:
    """Linear addresses of the enabled execute breakpoints (DR7 L or G, R/W 00)."""
    dr7 = drs[7]
    return {drs[n] & 0xFFFFFFFF for n in range(4)
            if (dr7 >> (2 * n)) & 3 and (dr7 >> (16 + 4 * n)) & 3 == 0}


def dr6_hits(drs, address: int) -> int:
    """DR6's B bits for an instruction fetch at `address`: every execute-type
    breakpoint at it, enabled or not (QEMU's check_hw_breakpoints, which
    emulate runs)."""
    return sum(1 << n for n in range(4)
               if (drs[7] >> (16 + 4 * n)) & 3 == 0 and drs[n] & 0xFFFFFFFF == address)


def clear_local_enables(mode) -> None:
    """The end of a task switch (runtime/taskswitch.py): the CPU clears DR7's
    L0-L3 (SDM vol. 3, 17.2.4; QEMU's switch_tss last of all, after the new
    EIP's limit check), and their breakpoints are disarmed.  Trap and bt keep
    DR7 in the virtual CPU; emulate's DR7 is Unicorn's, whose reg_write would
    not disarm QEMU's breakpoints (tests/runtime/test_breakpoints.py): there
    only the VMM's own switch (an IDT task gate) leaves L0-L3 set."""
    breakpoints = getattr(mode, "breakpoints", None)
    if breakpoints is None:
        return
    drs = list(mode.vcpu.get("dr"))
    if drs[7] & DR7_LOCAL_ENABLES:
        drs[7] &= ~DR7_LOCAL_ENABLES
        mode.vcpu.set("dr", *drs)
        breakpoints.update(drs)


class InstructionBreakpoints:
    """One per trap or bt VM: keeps a code hook on each enabled execute breakpoint."""

    def __init__(self, vm):
        self.vm = vm
        self.hooks: dict[int, tuple] = {}       # hooked address -> (Unicorn hook handle, guest address)
        self.enabled: set[int] = set()
        self.taken = 0
        self.suppressed = 0
        self._hook = RedirectingHook(vm, self._at)     # to the #DB handler (runtime/sitehook.py)

    def update(self, drs) -> None:
        """The guest wrote a debug register: place and remove hooks to match."""
        self.enabled = exec_breakpoints(drs)
        self.refresh()

    def refresh(self) -> None:
        """Hooks for the enabled breakpoints: at each address, and under bt also
        at the stub's copy of an instruction a jump patch covers after its
        first (there the guest's bytes are the patch's: the stub runs it)."""
        uc = self.vm.uc
        want = {a: a for a in self.enabled}
        stub_copy = getattr(self.vm.mode, "stub_copy", None)
        for a in self.enabled:
            lo = stub_copy(a) if stub_copy is not None else None
            if lo is not None:
                want[lo] = a
        for at in [h for h in self.hooks if want.get(h) != self.hooks[h][1]]:
            uc.hook_del(self.hooks.pop(at)[0])
            uc.ctl_remove_cache(at, at + 1)
        for at, guest in want.items():
            if at not in self.hooks:
                self.hooks[at] = (uc.hook_add(UC_HOOK_CODE, self._hook, None, at, at), guest)
                uc.ctl_remove_cache(at, at + 1)

    def _weightless_site(self, address: int) -> bool:
        """bt: is `address` a jump patch's site, whose `jmp` the clock weighs 0?"""
        patcher = getattr(self.vm.mode, "patcher", None)
        p = patcher.covering(address) if patcher is not None else None
        return p is not None and p.kind == "jump" and p.site == address

    def read_drs(self) -> list[int]:
        """DR0-DR7 as the guest set them (trap and bt: the virtual CPU's)."""
        return list(self.vm.mode.vcpu.get("dr"))

    def write_dr6(self, drs) -> None:
        self.vm.mode.vcpu.set("dr", *drs)

    def before_slice(self) -> None:
        self._hook.before_slice()

    def _at(self, at: int, size: int) -> int | None:
        """The #DB handler's EIP when the breakpoint raises, else None."""
        vm = self.vm
        hooked = self.hooks.get(at)
        if hooked is None or hooked[1] not in self.enabled:
            return None
        address = hooked[1]                     # the guest's (at: maybe a stub's copy)
        drs = self.read_drs()
        if address not in exec_breakpoints(drs):
            return None
        if vm.clock.c.rf_at == at:
            self.suppressed += 1                # RF: no breakpoint detected, DR6 untouched
            return None
        drs[6] = (drs[6] & ~DR6_HITS) | dr6_hits(drs, address)
        self.write_dr6(drs)
        if after_ss_load(vm, address):
            self.suppressed += 1                # detected (QEMU's DR6 too), not raised
            return None
        self.taken += 1
        # Started, as a fault's instruction is (emulate counts it so).  A jump
        # patch's site weighs 0 in the clock (its stub counts the instruction,
        # and the stub never runs now): that one is counted here.
        vm.clock.cut(at, True, linear=True)
        if at == address and self._weightless_site(address):
            vm.retired += 1                     # the slice adds the clock's count to both
            vm.vtime += 1
        vm.exit_site(at)
        vm.halt_slice()
        vm.deliver_exception(DB, address)
        return vm.uc.reg_read(X.UC_X86_REG_EIP)


def after_ss_load(vm, address: int) -> bool:
    """Is the instruction at `address` the one right after a MOV SS / POP SS,
    in its interrupt shadow?  The shadow is open (the CPU's load or the VMM's,
    runtime/emulation.py settle_irq_shadow) and the bytes before `address`
    end with an SS load; an sti (FB) right before opens the other shadow."""
    if not vm.quirks.irq_inhibited():
        return False
    start = (address - 15) & 0xFFFFFFFF
    csam = getattr(vm.mode, "csam", None)       # bt: the guest's bytes, patches hidden
    try:
        before = csam.linear_visible(start, 15) if csam is not None else vm.mem.try_read(start, 15)
    except Exception:           # not readable (a page not present): no SS load seen
        before = None
    if before is None or before[-1] == 0xFB:
        return False
    for size in range(1, 16):
        code = before[-size:]
        insn = decode(code)
        if insn is not None and insn.size == size and insn.row is not None \
                and insn.row.name in SHADOW_OPENERS:
            return True
    return False


class RFBlockBreakpoints(InstructionBreakpoints):
    """Emulate: QEMU arms the guest's breakpoints itself, but checks them as
    it translates a block, and a block translated with EFLAGS.RF set (the
    first after a #DB handler's iret) checks none of its instructions, where
    the CPU suppresses only the first one's: a breakpoint on the second
    instruction of that block never fired (tests/runtime/test_breakpoints.py,
    fact; fuzzer feature `breakpoints`).  So every enabled execute breakpoint
    also gets a code hook here.  Where QEMU checks, its #DB comes before the
    hook (fact), so the hook runs only where QEMU skipped the check, and it
    raises the #DB unless this is the RF block's first instruction or the one
    after an SS load -- the same rule as trap's and bt's hooks.

    The guest's `mov drN` runs inside Unicorn, unseen: the hooks follow DR7
    before every slice and at every #DB (`sync`); a hook whose breakpoint the
    guest has since disabled finds it so in the registers and does nothing.
    Missed: a breakpoint first enabled inside the #DB handler and reached in
    the RF block in the same slice."""

    def read_drs(self) -> list[int]:
        return engine_drs(self.vm.uc)

    def write_dr6(self, drs) -> None:
        self.vm.uc.reg_write(X.UC_X86_REG_DR6, drs[6])

    def sync(self) -> None:
        uc = self.vm.uc
        if not self.enabled and not uc.reg_read(X.UC_X86_REG_DR7) & 0xFF:
            return                          # the usual case: nothing armed, nothing hooked
        enabled = exec_breakpoints(self.read_drs())
        if enabled != self.enabled:
            self.enabled = enabled
            self.refresh()

    def before_slice(self) -> None:
        super().before_slice()
        self.sync()
