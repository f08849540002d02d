"""Port 0x61, "system control port B": PIT channel 2's gate and OUT, and the speaker.

A separate small device because it is a separate register on a PC (it also
carries the speaker enable and the refresh toggle), but it exists to reach
PIT channel 2: Linux's TSC calibration opens the gate (bit 0), programs channel
2 in mode 0 and polls bit 5 (OUT2) until the count runs out.

Read: bits 0-3 as last written, bit 4 the refresh toggle (flips every 18 PIT
clocks, about 15 us, derived from virtual time), bit 5 channel 2's OUT.
The speaker makes no sound.
"""
from __future__ import annotations

from . import regs
from .base import Device
from .pit import PIT, pit_ticks


class SystemControlB(Device):
    name = "port61"
    ports = (range(regs.PORT_B, regs.PORT_B + 1),)

    def __init__(self, pit: PIT):
        self.pit = pit
        self.value = 0

    def read(self, port: int, size: int) -> int:
        t = pit_ticks(self.link.now(), self.link.cpu_hz)
        refresh = regs.PORTB_REFRESH if (t // regs.REFRESH_PIT_TICKS) & 1 else 0
        out2 = regs.PORTB_OUT2 if self.pit.out2() else 0
        return self.value | refresh | out2

    def write(self, port: int, size: int, value: int) -> None:
        self.value = value & regs.PORTB_WRITABLE
        self.pit.set_gate2(bool(value & regs.PORTB_GATE2))

    @property
    def speaker_on(self) -> bool:
        both = regs.PORTB_GATE2 | regs.PORTB_SPEAKER
        return self.value & both == both
