"""The master/slave 8259A interrupt controller pair of a PC (0x20/0x21, 0xA0/0xA1).

The CPU side (the VMM's interrupt injection) uses `has_interrupt()` and
`acknowledge()` (the INTA cycle); devices reach `raise_irq`/`lower_irq` through
the machine link.  Requests are edge-latched in IRR; `lower_irq` withdraws a
request that was not acknowledged yet (what a level device dropping its line
does to a real 8259: the INTA then finds nothing and answers spurious 7/15).
The slave's INT output is computed on demand and feeds master IR2.

Each chip's IRR, IMR, ISR, lowest priority and initialisation step live in
one bytearray of the pair (`PICPair.registers`), which the native I/O hooks
share (runtime/_iofast.c, "The 8259's mask and EOI"): they read IMR and do
mask writes and EOIs in place, only where that cannot change the CPU's
interrupt line, so this model stays the one definition with no state to take
back.
"""
from __future__ import annotations

from bt.errors import VMMError

from . import regs
from .base import Device


# Offsets in a chip's bytes of PICPair.registers (runtime/_iofast.c PIC_*;
# PICPair.has_interrupt spells them as numbers for speed).
_IRR, _IMR, _ISR, _LOWEST, _INIT, CHIP_BYTES = range(6)


def _register(offset: int, doc: str) -> property:
    def get(self):
        return self._regs[self._at + offset]

    def set(self, value):
        self._regs[self._at + offset] = value & 0xFF
    return property(get, set, doc=doc)


class I8259:
    """One 8259A chip."""

    irr = _register(_IRR, "requests latched")
    imr = _register(_IMR, "the mask (OCW1)")
    isr = _register(_ISR, "levels in service")
    lowest = _register(_LOWEST, "lowest-priority level; IR(lowest+1) is highest")
    _init_step = _register(_INIT, "0: operational; 2/3/4: next data write is ICWn")

    def __init__(self, name: str, is_master: bool, regs: bytearray | None = None, at: int = 0):
        self.name = name
        self.is_master = is_master
        self._regs = regs if regs is not None else bytearray(CHIP_BYTES)
        self._at = at
        self.irr = 0
        self.isr = 0
        self.imr = 0xFF            # masked until the guest initialises it
        self.vector_base = 0x08 if is_master else 0x70   # PC BIOS values
        self.auto_eoi = False
        self.rotate_on_aeoi = False
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        self.lowest = 7
        self.single = False
        self.level_mode = False
        self.icw3 = 0
        self.sfnm = False
        self._init_step = 0
        self._expect_icw4 = False
        self.cascade_in = None     # master only: callable -> slave INT output

    # --- priority -------------------------------------------------------------
    def _requests(self) -> int:
        r, at = self._regs, self._at
        irr = r[at + _IRR]
        if self.cascade_in is not None and self.cascade_in():
            irr |= 1 << regs.PIC_CASCADE_LINE
        return irr & ~r[at + _IMR] & 0xFF

    def pending(self) -> int | None:
        """The level the chip would signal now: the highest-priority unmasked
        request not blocked by an in-service level of equal or higher priority."""
        req = self._requests()
        if not req:
            return None
        r, at = self._regs, self._at
        isr = r[at + _ISR]
        if self.special_mask:
            isr &= ~r[at + _IMR]  # special mask mode: masked in-service levels don't block
        lowest = r[at + _LOWEST]
        for i in range(8):
            line = (lowest + 1 + i) & 7
            bit = 1 << line
            if isr & bit and not (self.sfnm and line == regs.PIC_CASCADE_LINE
                                  and self.is_master and req & bit):
                return None
            if req & bit:
                return line
        return None

    def _highest_in_service(self) -> int | None:
        for i in range(8):
            line = (self.lowest + 1 + i) & 7
            if self.isr & (1 << line):
                return line
        return None

    def ack(self, line: int) -> None:
        """INTA for `line`: the request moves from IRR to ISR (unless auto-EOI)."""
        self.irr &= ~(1 << line)
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.lowest = line
        else:
            self.isr |= 1 << line

    # --- ports ----------------------------------------------------------------
    def write_command(self, value: int) -> None:
        if value & regs.ICW1_INIT:
            # ICW1 starts initialisation: clears the mask and the in-service state,
            # resets priorities and special modes, selects IRR for reads.
            self.imr = 0
            self.isr = 0
            self.irr = 0
            self.lowest = 7
            self.special_mask = False
            self.read_isr = False
            self.poll = False
            self.auto_eoi = False
            self.rotate_on_aeoi = False
            self.sfnm = False
            self.single = bool(value & regs.ICW1_SNGL)
            self.level_mode = bool(value & regs.ICW1_LTIM)
            self._expect_icw4 = bool(value & regs.ICW1_IC4)
            self._init_step = 2
        elif value & regs.OCW3_SELECT:
            self._ocw3(value)
        else:
            self._ocw2(value)

    def _ocw2(self, value: int) -> None:
        cmd = value & 0xE0
        level = value & 7
        if cmd == regs.OCW2_EOI:                                # non-specific EOI
            line = self._highest_in_service()
            if line is not None:
                self.isr &= ~(1 << line)
        elif cmd == regs.OCW2_EOI | regs.OCW2_SL:               # specific EOI
            self.isr &= ~(1 << level)
        elif cmd == regs.OCW2_R | regs.OCW2_EOI:                # rotate on non-specific EOI
            line = self._highest_in_service()
            if line is not None:
                self.isr &= ~(1 << line)
                self.lowest = line
        elif cmd == regs.OCW2_R | regs.OCW2_SL | regs.OCW2_EOI:  # rotate on specific EOI
            self.isr &= ~(1 << level)
            self.lowest = level
        elif cmd == regs.OCW2_R | regs.OCW2_SL:                 # set priority
            self.lowest = level
        elif cmd == regs.OCW2_R:                                # rotate in AEOI: set
            self.rotate_on_aeoi = True
        elif cmd == 0:                                          # rotate in AEOI: clear
            self.rotate_on_aeoi = False
        # 0x40 (SL alone) is a no-op.

    def _ocw3(self, value: int) -> None:
        if value & regs.OCW3_ESMM:
            self.special_mask = bool(value & regs.OCW3_SMM)
        if value & regs.OCW3_RR:
            self.read_isr = bool(value & regs.OCW3_RIS)
        self.poll = bool(value & regs.OCW3_POLL)

    def write_data(self, value: int) -> None:
        step = self._init_step
        if step == 2:
            self.vector_base = value & 0xF8
            if not self.single:
                self._init_step = 3
            else:
                self._init_step = 4 if self._expect_icw4 else 0
        elif step == 3:
            self.icw3 = value
            self._init_step = 4 if self._expect_icw4 else 0
        elif step == 4:
            self.auto_eoi = bool(value & regs.ICW4_AEOI)
            self.sfnm = bool(value & regs.ICW4_SFNM)
            self._init_step = 0
        else:
            self.imr = value                                    # OCW1

    def read_command(self) -> int:
        if self.poll:
            # Poll command: the read acts as an INTA and reports the level.
            self.poll = False
            line = self.pending()
            if line is None:
                return 0x00
            self.ack(line)
            return 0x80 | line
        return self.isr if self.read_isr else self.irr

    def read_data(self) -> int:
        return self.imr


class PICPair(Device):
    name = "pic"
    ports = (range(regs.PIC_MASTER_CMD, regs.PIC_MASTER_DATA + 1),
             range(regs.PIC_SLAVE_CMD, regs.PIC_SLAVE_DATA + 1))

    def __init__(self):
        # both chips' registers, shared with the native I/O hooks (see the module doc)
        self.registers = bytearray(2 * CHIP_BYTES)
        self.master = I8259("master", True, self.registers, 0)
        self.slave = I8259("slave", False, self.registers, CHIP_BYTES)
        self.master.cascade_in = lambda: self.slave.pending() is not None
        self.spurious = 0
        self.acknowledged = 0

    def publish(self) -> None:
        if self.fast is not None:
            self.fast.publish_pic(self.registers)

    # --- device lines -------------------------------------------------------
    def raise_irq(self, line: int) -> None:
        """A rising edge on ISA IRQ `line` (0-15) latches a request in IRR."""
        chip, bit = self._chip(line)
        chip.irr |= bit

    def lower_irq(self, line: int) -> None:
        """The line dropped: a request not yet acknowledged is withdrawn."""
        chip, bit = self._chip(line)
        chip.irr &= ~bit

    def _chip(self, line: int) -> tuple[I8259, int]:
        if not 0 <= line < 16:
            raise VMMError(f"IRQ line {line} outside 0-15")
        return (self.master, 1 << line) if line < 8 else (self.slave, 1 << (line - 8))

    # --- CPU side -----------------------------------------------------------
    def has_interrupt(self) -> bool:
        # The run loop asks this every slice: with no request that its IMR lets
        # through on either chip (the usual state) nothing is pending, whatever
        # ISR holds, and the slave drives no cascade request either.
        r = self.registers              # offsets: _IRR, _IMR; the slave's CHIP_BYTES on
        if not (r[0] & ~r[1] or r[5] & ~r[6]):
            return False
        return self.master.pending() is not None

    def acknowledge(self) -> int:
        """The INTA cycle: returns the vector and moves the request in service.

        With nothing left to deliver (the request was withdrawn) the chip answers
        with its IR7 vector without setting ISR, as real 8259s do (spurious IRQ 7,
        or 15 from the slave, in which case master IR2 stays in service)."""
        master, slave = self.master, self.slave
        line = master.pending()
        if line is None:
            self.spurious += 1
            return master.vector_base + 7
        if line == regs.PIC_CASCADE_LINE and not master.single:
            sline = slave.pending()
            master.ack(line)
            if sline is None:
                self.spurious += 1
                return slave.vector_base + 7
            slave.ack(sline)
            self.acknowledged += 1
            return slave.vector_base + sline
        master.ack(line)
        self.acknowledged += 1
        return master.vector_base + line

    # --- ports ----------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        chip = self.master if port < regs.PIC_SLAVE_CMD else self.slave
        return chip.read_command() if port & 1 == 0 else chip.read_data()

    def write(self, port: int, size: int, value: int) -> None:
        chip = self.master if port < regs.PIC_SLAVE_CMD else self.slave
        if port & 1 == 0:
            chip.write_command(value)
        else:
            chip.write_data(value)

    def stats(self) -> dict:
        return {"acknowledged": self.acknowledged, "spurious": self.spurious}
