"""Port 0x80, the POST-code port: accepted and ignored.

Linux writes it for short I/O delays (`outb_p`), tens of thousands of times per
boot, so it must not count as an unhandled port.  The last code is kept for
diagnostics; reads float to all ones as on a board without a POST display.
"""
from __future__ import annotations

from . import regs
from .base import Device


class PostCode(Device):
    name = "port80"
    ports = (range(regs.POST_PORT, regs.POST_PORT + 1),)

    def __init__(self):
        self.last: int | None = None

    def publish(self) -> None:
        """Both directions are answered natively (runtime/iofast.py): a read
        always floats, and a write only records the code, which the queue's
        replay does in order."""
        if self.fast is not None:
            self.fast.publish_read(regs.POST_PORT, 0xFF)
            self.fast.publish_sink(regs.POST_PORT, True)

    def read(self, port: int, size: int) -> int:
        return 0xFF

    def write(self, port: int, size: int, value: int) -> None:
        self.last = value & 0xFF
