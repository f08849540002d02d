"""The i8042 keyboard controller (data 0x60, status/command 0x64), no keyboard or mouse.

Present so that a guest can reboot the machine the PC way: command 0xFE
(pulse the reset line) or a write of the output port with bit 0 clear stops
the run with reason "reset" and status 0.  Enough of the controller answers
for Linux's i8042 driver to find it and then find no devices: the
configuration byte (0x20/0x60), self-test 0xAA -> 0x55, interface tests
0xAB/0xA9 -> 0x00, port enable/disable, the output port (0xD0/0xD1) and the
loop-back commands 0xD2/0xD3.  Bytes written to 0x60 without a pending command
go to the (absent) keyboard and are dropped.  Commands complete at once, so
the input-buffer-full bit never reads set.  No IRQ 1/12 is raised: the
output buffer only ever holds command answers, which drivers poll for.
"""
from __future__ import annotations

from bt.outcome import Outcome

from . import regs
from .base import Device


class I8042(Device):
    name = "i8042"
    ports = (range(regs.I8042_DATA, regs.I8042_DATA + 1),
             range(regs.I8042_STATUS, regs.I8042_STATUS + 1))

    def __init__(self):
        self.ctr = regs.I8042_CTR_DEFAULT
        self.outport = regs.I8042_OUTPORT_DEFAULT
        self.status = regs.I8042_STR_SYSFLAG | regs.I8042_STR_KEYLOCK
        self.out: int | None = None          # output buffer
        self.out_aux = False
        self.pending: int | None = None      # command waiting for its data byte
        self.resets = 0

    def _answer(self, value: int, aux: bool = False) -> None:
        self.out = value & 0xFF
        self.out_aux = aux

    def read(self, port: int, size: int) -> int:
        if port == regs.I8042_STATUS:
            s = self.status
            if self.out is not None:
                s |= regs.I8042_STR_OBF | (regs.I8042_STR_AUXDATA if self.out_aux else 0)
            return s
        value = self.out if self.out is not None else 0
        self.out = None
        return value

    def write(self, port: int, size: int, value: int) -> None:
        if port == regs.I8042_STATUS:
            self.status |= regs.I8042_STR_CMDDAT
            self._command(value)
            return
        self.status &= ~regs.I8042_STR_CMDDAT
        cmd, self.pending = self.pending, None
        if cmd == regs.I8042_CMD_WRITE_CTR:
            self.ctr = value
        elif cmd == regs.I8042_CMD_WRITE_OUTPORT:
            self.outport = value
            if not value & regs.I8042_OUTPORT_RESET:
                self._reset()
        elif cmd == regs.I8042_CMD_WRITE_KBD_OUTBUF:
            self._answer(value)
        elif cmd == regs.I8042_CMD_WRITE_AUX_OUTBUF:
            self._answer(value, aux=True)
        # Otherwise (or 0xD4, to the mouse): the device is absent, the byte is lost.

    def _command(self, cmd: int) -> None:
        self.pending = None
        if cmd == regs.I8042_CMD_READ_CTR:
            self._answer(self.ctr)
        elif cmd in (regs.I8042_CMD_WRITE_CTR, regs.I8042_CMD_WRITE_OUTPORT,
                     regs.I8042_CMD_WRITE_KBD_OUTBUF, regs.I8042_CMD_WRITE_AUX_OUTBUF,
                     regs.I8042_CMD_WRITE_AUX):
            self.pending = cmd
        elif cmd == regs.I8042_CMD_SELF_TEST:
            self._answer(regs.I8042_SELF_TEST_OK)
        elif cmd in (regs.I8042_CMD_KBD_TEST, regs.I8042_CMD_AUX_TEST):
            self._answer(0x00)
        elif cmd == regs.I8042_CMD_KBD_DISABLE:
            self.ctr |= 0x10
        elif cmd == regs.I8042_CMD_KBD_ENABLE:
            self.ctr &= ~0x10
        elif cmd == regs.I8042_CMD_AUX_DISABLE:
            self.ctr |= 0x20
        elif cmd == regs.I8042_CMD_AUX_ENABLE:
            self.ctr &= ~0x20
        elif cmd == regs.I8042_CMD_READ_OUTPORT:
            self._answer(self.outport)
        elif 0xF0 <= cmd <= 0xFF and not cmd & 0x01:
            # Pulse output lines; bit 0 clear pulses the CPU reset line (0xFE).
            self._reset()

    def _reset(self) -> None:
        self.resets += 1
        self.link.request_stop(Outcome.RESET)

    def stats(self) -> dict:
        return {"reset_requests": self.resets} if self.resets else {}
