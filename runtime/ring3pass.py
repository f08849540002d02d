"""Ring 3 passing a patched kernel site under paging (bt, issue 21).

Under paging the stub cache is supervisor-only (runtime/paging.py).  Kernel code
on user-accessible pages that ring 3 runs (kvm-unit-tests' umip.flat calls
kernel functions at ring 3) reaches a jump patch's `jmp` and faults fetching
the stub.  The guest's original instructions at CPL 3 are what the CPU would
run, and bt runs all other ring-3 code natively with the guest's own EFLAGS
(IOPL included) in the real ones (BTMode.set_guest_eflags).  So the passage:

1. the fetch #PF at the stub (CR2 == EIP, CPL 3) lifts the patch
   (patcher/patches.py `lift`: the guest's bytes back at the site, the stub
   kept), puts EIP at the guest instruction the stub point stands for, and
   ends the slice (the fetch fault is not counted: the clock weighs the
   site's `jmp` 0 and the stub's first instruction never started);
2. slices of one instruction run the original bytes natively at CPL 3 --
   pushf(d)/popf(d)/cli/sti see the guest's IOPL and IF in the real EFLAGS, a
   privileged one faults as on the CPU and the fault is the guest's -- except
   the covered instructions with an emulation routine (sgdt, smsw, ...: run
   natively they would show the VMM's tables): those hold an int3 meanwhile
   and are emulated at CPL 3 as an int3 patch's are (runtime/bt.py `on_fault`);
3. before the first slice that would start outside the covered bytes, or at
   another CPL (a fault, an interrupt, the end of the passage), the patch is
   put back (`put_back`), so ring-0 code never runs the bytes unpatched.
"""
from __future__ import annotations

from unicorn import x86_const as X

from runtime.decode import decode
from runtime.emulation import has_routine


def _emulated(ins) -> bool:
    insn = decode(ins.data)
    return insn is not None and has_routine(insn.row)


class Ring3Passage:
    def __init__(self, mode):
        self.mode = mode
        self.held = None            # the lifted Patch while ring 3 runs its bytes
        self.trapped = {}           # guest address -> covered Insn holding an int3
        self.passages = 0

    def begin(self, patch, guest: int) -> None:
        """From the fault hook: lift `patch`, resume at `guest` one instruction
        at a time."""
        mode = self.mode
        self.end()                       # an earlier passage ran on into this site
        self.trapped = {i.addr: i for i in mode.patcher.lift(patch, _emulated)}
        self.held = patch
        self.passages += 1
        mode.vm.fast.reg_write(X.UC_X86_REG_EIP, guest)
        mode.vm.halt_slice()

    def inside(self) -> bool:
        p = self.held
        if p is None:
            return False
        fast = self.mode.vm.fast
        eip = fast.reg_read(X.UC_X86_REG_EIP)
        return fast.reg_read(X.UC_X86_REG_CS) & 3 == 3 and p.site <= eip < p.extent

    def before_slice(self) -> None:
        """Between slices: end the passage once ring 3 left the covered bytes."""
        if not self.inside():
            self.end()

    def end(self) -> None:
        if self.held is not None:
            p, self.held, self.trapped = self.held, None, {}
            self.mode.patcher.put_back(p)

    def emulated_at(self, site: int):
        """The covered instruction whose int3 ring 3 just ran, if any."""
        return self.trapped.get(site) if self.held is not None else None

