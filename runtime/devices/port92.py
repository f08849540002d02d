"""Port 0x92, system control port A: the PC's "fast" reset and A20 gate.

As QEMU's hw/i386/port92.c: the port holds the byte last written and reads it
back; bit 0 going from 0 to 1 resets the machine, which ends the run with
outcome "reset" (status 0), as the keyboard controller's reset does
(runtime/devices/i8042.py) and as QEMU does under kvm-unit-tests' --no-reboot.
Bit 1 is the A20 gate: stored and read back, but this machine keeps A20
enabled whatever is written (no guest of the project runs with A20 masked; a
write clearing it is counted in the report).  The byte starts as 0x02 (A20
enabled, as a BIOS leaves it and as the i8042's output port reads here),
where QEMU starts at 0.
"""
from __future__ import annotations

from bt.outcome import Outcome

from . import regs
from .base import Device


class SystemControlA(Device):
    name = "port92"
    ports = (range(regs.PORT_A, regs.PORT_A + 1),)

    def __init__(self):
        self.value = regs.PORTA_DEFAULT
        self.resets = 0
        self.a20_off_writes = 0

    def read(self, port: int, size: int) -> int:
        return self.value

    def write(self, port: int, size: int, value: int) -> None:
        old, self.value = self.value, value & 0xFF
        if not value & regs.PORTA_A20:
            self.a20_off_writes += 1
        if value & regs.PORTA_RESET and not old & regs.PORTA_RESET:
            self.resets += 1
            self.link.request_stop(Outcome.RESET)

    def stats(self) -> dict:
        out = {}
        if self.resets:
            out["reset_requests"] = self.resets
        if self.a20_off_writes:
            out["a20_off_writes"] = self.a20_off_writes
        return out
