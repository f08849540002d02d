"""The debug-exit port (0xF4): a byte v written there ends the run with guest status v.

This is how demo guests and test guests report a result (QEMU's isa-debug-exit
plays the same part, though it turns v into 2v+1; here the status is v itself).
Wider writes are split by the bus, so `out dx, ax` exits with the low byte.
Reads find nothing there and float to all ones.
"""
from __future__ import annotations

from bt.outcome import Outcome

from . import regs
from .base import Device


class DebugExit(Device):
    name = "debug-exit"
    ports = (range(regs.DEBUG_EXIT_PORT, regs.DEBUG_EXIT_PORT + 1),)

    def __init__(self):
        self.status: int | None = None

    def read(self, port: int, size: int) -> int:
        return 0xFF

    def write(self, port: int, size: int, value: int) -> None:
        self.status = value & 0xFF
        self.link.request_stop(Outcome.DEBUG_EXIT, self.status)
