"""The host terminal as COM1's other end, for interactive runs (`bt-run` on a TTY).

Not a port device: it owns no I/O ports, only a place in the bus's timed list
(its next event is always at most 1/POLL_HZ virtual seconds away), so the VM
polls it after every slice and every idle step without any change to the run
loop.  On each tick it

  * reads whatever the user typed (non-blocking) and feeds it to the UART's
    receiver, intercepting the QEMU-style escape: Ctrl-A x ends the run
    (reason "quit", status 0), Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A
    followed by anything else is dropped;
  * paces virtual time: when the guest idles, the VM jumps virtual time to the
    next timer event, which would let an idle shell spin the host CPU at 100%
    and run the guest's clock many times faster than the wall clock.  So the
    tick waits (in select(), so a keystroke wakes it at once) until wall time
    has caught up with virtual time.  A busy guest is slower than real time
    anyway and never waits.

Interactive runs are not deterministic (keystrokes arrive when they arrive);
scripted input (`--serial-input`, ScriptedInput) is the deterministic path.
`raw_terminal(fd)` puts the TTY in raw mode for the run and restores it on exit,
also when an exception unwinds.
"""
from __future__ import annotations

import os
import select
import termios
import time
import tty
from contextlib import contextmanager

from bt.outcome import Outcome

from .base import Device

CTRL_A = 0x01
QUIT_KEY = ord("x")
MAX_WAIT = 0.05     # seconds: longest single wait, so the loop stays responsive
POLL_HZ = 100       # the terminal is polled at least this often per virtual second


@contextmanager
def raw_terminal(fd: int):
    """Raw mode on `fd` (no echo, no line editing, no signals from ^C) for the block."""
    saved = termios.tcgetattr(fd)
    try:
        # TCSANOW, not setraw's default TCSAFLUSH: keys typed while bt-run starts
        # (calibration, image loading: seconds on a loaded machine) are kept and
        # reach the guest, Ctrl-A x among them, instead of being thrown away.
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class HostConsole(Device):
    """Feeds bytes read from `fd` to `uart`; see the module docstring."""

    name = "host-console"
    ports = ()

    def __init__(self, fd: int, uart, pace: bool = True, clock=time.monotonic):
        self.fd = fd
        self.uart = uart
        self.pace = pace
        self.clock = clock
        self.t0: float | None = None
        self.escape = False
        self.eof = False
        self.typed = 0

    def next_event(self) -> int | None:
        # Bound every slice, so a guest that spins without a timer still sees
        # keystrokes (and Ctrl-A x) within POLL_HZ-ths of a virtual second.
        return self.link.now() + max(1, self.link.cpu_hz // POLL_HZ)

    def tick(self, now: int) -> None:
        if self.t0 is None:
            self.t0 = self.clock()
        wait = 0.0
        if self.pace:
            ahead = now / self.link.cpu_hz - (self.clock() - self.t0)
            wait = min(max(ahead, 0.0), MAX_WAIT)
        self.poll(wait)

    def poll(self, wait: float = 0.0) -> None:
        if self.eof:
            if wait > 0:
                time.sleep(wait)
            return
        ready, _, _ = select.select([self.fd], [], [], wait)
        if not ready:
            return
        try:
            data = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:         # the terminal went away (e.g. pty closed)
            data = b""
        if not data:
            self.eof = True
            return
        self._keys(data)

    def _keys(self, data: bytes) -> None:
        out = bytearray()
        for b in data:
            if self.escape:
                self.escape = False
                if b == QUIT_KEY:
                    if out:
                        self.uart.feed(bytes(out))
                    self.link.request_stop(Outcome.QUIT)
                    return
                if b == CTRL_A:
                    out.append(CTRL_A)
            elif b == CTRL_A:
                self.escape = True
            else:
                out.append(b)
        if out:
            self.typed += len(out)
            self.uart.feed(bytes(out))

    def stats(self) -> dict:
        return {"typed_bytes": self.typed} if self.typed else {}
