"""The CPU's one interrupt input: the local APIC first, then the 8259 pair.

A PC's 8259 drives the CPU's INTR through the local APIC's LINT0 (virtual
wire, ExtINT): while the APIC is globally disabled or LINT0 is unmasked, the
PIC's requests reach the CPU; the APIC's own (IPIs, its timer) come first, as
in QEMU's x86_cpu_exec_interrupt -> apic_get_interrupt, then pic_read_irq.
A guest that never touches the APIC (Linux with `nolapic`) sees the 8259 alone,
exactly as before the APIC existed: LINT0 starts as ExtINT, unmasked.

The VM injects from this object only (`has_interrupt`, `acknowledge`; NMIs,
which bypass IF and the priorities, through `has_nmi`, `take_nmi`), and
devices' IRQ lines (`raise_irq`, `lower_irq`) go to the 8259.
"""
from __future__ import annotations

from .lapic import LocalAPIC
from .pic import PICPair


class InterruptRouter:
    def __init__(self, pic: PICPair, lapic: LocalAPIC):
        self.pic = pic
        self.lapic = lapic

    def raise_irq(self, line: int) -> None:
        self.pic.raise_irq(line)

    def lower_irq(self, line: int) -> None:
        self.pic.lower_irq(line)

    def has_interrupt(self) -> bool:
        if self.lapic.has_interrupt():
            return True
        return self.lapic.lint0_passes_pic() and self.pic.has_interrupt()

    def has_nmi(self) -> bool:
        return self.lapic.nmi_pending

    def take_nmi(self) -> None:
        self.lapic.take_nmi()

    def acknowledge(self) -> int:
        """INTA: the vector to deliver (call only after has_interrupt())."""
        if self.lapic.has_interrupt():
            return self.lapic.acknowledge()
        return self.pic.acknowledge()
