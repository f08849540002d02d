"""An iret with NT=1 under trap and bt: the guest's return to its previous task.

At CPL 1 the CPU runs iret itself, and with NT set it reads the back link of
the TSS the real TR names -- the VMM's own (runtime/trap.py `boot`), inside
the hypervisor area, where the guard refuses every guest-side access
(runtime/isolation.py).  So the native iret never reaches the guest's TSS:
Unicorn abandons it on the guard's refusal (seen: the run ended as an
unmapped access at the VMM TSS's address; tests/runtime/test_taskswitch.py),
and the slice ends with an error the mode is asked to claim.  This module
recognises that one refusal -- a read of the VMM TSS's back link, at CPL 1 or 3,
the guest's NT set, the instruction an iret -- and performs the guest's task
return with the shared task switch (runtime/taskswitch.py); the instruction
counts once, as the abandoned access already counted it as started (runtime/vm.py).
"""
from __future__ import annotations

from unicorn import UC_MEM_READ_PROT
from unicorn import x86_const as X

from bt.hyper_layout import VMM_TSS
from bt.x86 import NT_BIT
from runtime.delivery import GuestFault
from runtime.modes import StopSlice

LINK_BYTES = 2          # the back link: the first word of a TSS


def claim_task_return(mode, hit) -> bool:
    """True when the guard's refusal `hit` (kind, address) was an iret with
    NT=1 and the task return has been done (or its fault delivered)."""
    kind, address = hit
    link = mode.hyper.addr(VMM_TSS)
    if kind != UC_MEM_READ_PROT or not link <= address < link + LINK_BYTES:
        return False
    vm = mode.vm
    if vm.quirks.cpl() not in (1, 3) or not mode.guest_eflags() & NT_BIT:
        return False
    eip = vm.uc.reg_read(X.UC_X86_REG_EIP)
    insn = mode.decoder.at(eip)
    if insn is None or insn.row is None or insn.row.name != "iretd":
        return False
    vm._vmm_stopped = True
    vm.exit_site(eip)
    # The iret completes here, after the slice's NMI check (runtime/vm.py runs
    # it before asking the mode to claim the error): NMI blocking ends now.
    vm.nmi.iret_completed()
    try:
        vm.tasks.iret(eip + insn.size)
    except GuestFault as f:
        vm.counters.add("faults_reflected", f.vector)
        if f.cr2 is not None:
            mode.write_cr(2, f.cr2)
        try:
            vm.deliver_exception(f.vector, eip if f.task_eip is None else f.task_eip, f.error_code)
        except StopSlice:
            pass                    # a triple fault: the run's end is set
    return True
