"""Interrupt and exception delivery in real mode (CR0.PE clear).

With PE clear the CPU vectors through the interrupt vector table at IDTR.base:
4 bytes per vector (IP, then CS), no gates, no privilege checks, no error code.
It pushes FLAGS, CS and IP as 16-bit words on SS:SP (SP wraps within 64 KiB),
clears IF, TF, AC and RF, and loads CS:IP from the entry (SDM vol. 2 "INT n",
REAL-ADDRESS-MODE; QEMU's do_interrupt_real).  A vector whose entry lies past
IDTR.limit is #GP, delivered through the same table; the double-fault and
shutdown rules are runtime/delivery.py's (`Delivery.deliver` escalates that
#GP as in protected mode: #GP while delivering #GP is a #DF, a fault while
delivering #DF a shutdown).

Unicorn never vectors in real mode either: `int n` reaches UC_HOOK_INTR with
IP past it, a fault with IP at the instruction (tests/runtime/test_realmode_facts.py),
so this is the VMM's one real-mode delivery path, shared by every mode.
Segment bases are taken as selector * 16: a guest that loaded SS in protected
mode and cleared PE without reloading it ("unreal" stack) would push elsewhere
than here (docs/machine.md, "Real mode").
"""
from __future__ import annotations

import struct

from unicorn import x86_const as X

from bt.x86 import AC_BIT, IF_BIT, RF_BIT, TF_BIT

IVT_ENTRY = 4


def deliver_real(vm, vector: int, return_ip: int) -> bool:
    """Deliver `vector` through the real-mode IVT; False when its entry lies
    past IDTR.limit (the caller raises #GP: runtime/delivery.py)."""
    uc = vm.uc
    idt_base, idt_limit = vm.guest_idtr()
    if vector * IVT_ENTRY + IVT_ENTRY - 1 > idt_limit:
        return False
    # PE clear: no paging, the linear address is physical (OutsideRam past RAM).
    ip, cs = struct.unpack("<HH", vm.mem.read_cpu(idt_base + vector * IVT_ENTRY, IVT_ENTRY))
    flags = vm.guest_eflags()
    old_cs = uc.reg_read(X.UC_X86_REG_CS)
    ss = uc.reg_read(X.UC_X86_REG_SS)
    esp = uc.reg_read(X.UC_X86_REG_ESP)
    sp = esp & 0xFFFF
    # Three word pushes, each wrapping within the 64 KiB stack segment.
    for word in (flags & 0xFFFF, old_cs & 0xFFFF, return_ip & 0xFFFF):
        sp = (sp - 2) & 0xFFFF
        vm.mem.push_cpu((ss << 4) + sp, struct.pack("<H", word))
    uc.reg_write(X.UC_X86_REG_ESP, (esp & 0xFFFF0000) | sp)
    vm.mode.on_vmm_branch((cs << 4) + ip)
    uc.reg_write(X.UC_X86_REG_CS, cs)        # PE clear: base = cs * 16 (fact test)
    uc.reg_write(X.UC_X86_REG_EIP, ip)
    vm.set_guest_eflags(flags & ~(IF_BIT | TF_BIT | AC_BIT | RF_BIT))
    return True
