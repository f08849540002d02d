"""Port I/O without a Python exit where the device allows it (issue 19).

`NativeIO` installs the engine's `in`/`out` hooks as C functions
(runtime/_iofast.c).  A device publishes, through `publish_read` and
`publish_sink`, the one-byte reads whose value it knows and that change
nothing (the UART's line-status register), and the ports whose one-byte
writes may wait in a queue (the UART's transmit register while a byte sent
raises no interrupt); the C hooks answer those, and call the VM's Python hooks
for every other access.  The device model stays the one definition: queued
writes are replayed through the I/O bus (the device's own `write`) by `drain`,
which the VM calls before each slow I/O access and at the end of each slice,
so the device sees the same bytes in the same order and state; and a device
that changes its state republishes (it does so only from Python: its own
`read`/`write`, host input, its `tick`).

The PIT's counters are published differently (`publish_timer`): their
value is a function of virtual time, so a channel publishes its counting
state (runtime/devices/pit.py `Channel.native_state`) and the C hook computes
the count at the running instruction's virtual time (the clock's
`vtime_now`, set up by `use_clock_time`), toggling the lo/hi flip-flop
itself and popping a pending count latch's bytes; the PIT takes both back
(`timer_take`) before any Python
access and republishes after it.  Linux's quick_pit_calibrate reads channel
2 ~21,000 times per boot, and its i8253 code reads channel 0's latch ~2,900
times; those reads no longer exit (docs/benchmarks.md,
"The PIT's counter reads answered natively").

The counter-latch command (`out 0x43` naming a published channel) is done
here too: the count at that instruction's virtual time goes into the latch
bytes C owns.  Linux's i8253 read of channel 0 (latch, two reads) never
exits.

The 8259 pair (runtime/devices/pic.py) shares its registers instead
(`publish_pic`): IRR, IMR, ISR, lowest priority and the ICW step of both
chips live in one bytearray the C hooks read and write in place, so nothing
is queued or taken back.  The hooks answer IMR reads, and do mask writes and
EOIs only while no chip has an unmasked request before or after: then the
CPU's interrupt line is low throughout, as the Python model would leave it
(runtime/_iofast.c "The 8259's mask and EOI").  Linux's per-tick
mask_and_ack_8259A and unmask never exit.

Ports no device claims (`publish_floating`, from the bus) read 0xFF and
queue their writes; `drain` hands the reads' counts to the bus's unhandled
figures and the replayed writes count themselves (ISA PnP's probe of 0x279).

Not published: anything else whose answer changes the device (the PIC's
IRR/ISR reads after an OCW3, its ICWs, a mask write or EOI that could move
the interrupt line; RBR, IIR, MSR, IER; a PIT channel with a status latch
pending, BCD, or in modes 1, 4, 5, and the PIT's other control words).
See docs/benchmarks.md, "The boot's timer traffic answered natively".
"""
from __future__ import annotations

import ctypes

from unicorn import UC_HOOK_INSN
from unicorn import x86_const as X

from runtime import _iofast
from runtime.fastuc import hook_add

_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                          ctypes.c_void_p)
_OUT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                           ctypes.c_void_p)


class NativeIO:
    """The engine's in/out hooks.  `on_in(port, size) -> value` and
    `on_out(port, size, value)` are the slow paths (they must not raise:
    the VM's `guarded` hooks record errors)."""

    def __init__(self, uc, bus, on_in, on_out):
        self.bus = bus
        # The CFUNCTYPE objects must outlive the engine: keep them on self.
        self._slow_in = _IN_CB(lambda _uc, port, size, _ud: on_in(port, size) or 0)
        self._slow_out = _OUT_CB(lambda _uc, port, size, value, _ud: on_out(port, size, value))
        self.c = _iofast.IoFast(ctypes.cast(self._slow_in, ctypes.c_void_p).value,
                                ctypes.cast(self._slow_out, ctypes.c_void_p).value)
        fin, fout = _iofast.callbacks()
        self.handles = [hook_add(uc, UC_HOOK_INSN, fin, id(self.c), 1, 0, ctypes.c_int(X.UC_X86_INS_IN)),
                        hook_add(uc, UC_HOOK_INSN, fout, id(self.c), 1, 0, ctypes.c_int(X.UC_X86_INS_OUT))]

    def repair_site_flags(self, clock) -> None:
        """Let the clock repair the lazy flags first in every port access (an
        in/out right after another is one of its sync sites: runtime/_clock.c,
        "Lazy flags at a sync-hook site")."""
        from runtime import _clock
        self._clock = clock              # the C side keeps a bare pointer to it
        self.c.set_site_flags(_clock.site_flags_address(), id(clock.c))

    def use_clock_time(self, clock, pit_port: int, cpu_hz: int) -> None:
        """Let the C hook answer the PIT's published counter reads from the
        clock's virtual time of the running instruction (runtime/_clock.c
        vtime_now: VM.now(), natively; valid once the clock's TSC hooks are
        enabled, runtime/tsc.py, before anything runs)."""
        from bt.machine import PIT_HZ
        from runtime import _clock
        self._clock = clock              # the C side keeps a bare pointer to it
        self.c.set_timer_clock(_clock.vtime_now_address(), id(clock.c), pit_port, cpu_hz, PIT_HZ)
        self.timers = True

    # -- what devices call --------------------------------------------------------
    # False: publish_timer is never answered (no clock time; the PIT keeps its reads)
    timers = False

    def publish_timer(self, index: int, state: tuple | None) -> None:
        """A PIT channel's read state (runtime/devices/pit.py), or None."""
        self.c.publish_timer(index, state)

    def timer_take(self, index: int) -> tuple[bool, bytes]:
        """The channel's lo/hi read flip-flop and the count latch's bytes not
        yet read, as the native reads left them."""
        return self.c.timer_take(index)

    def publish_pic(self, registers: bytearray | None) -> None:
        """The 8259 pair's registers (runtime/devices/pic.py `PICPair.registers`),
        shared: the C hooks read and change them in place."""
        self.c.publish_pic(registers)

    def publish_floating(self, flags: bytes) -> None:
        """One flag per port: 1 where no device claims the port (reads float
        to 0xFF, writes are queued for the bus to count)."""
        self.c.publish_floating(flags)

    def publish_read(self, port: int, value: int | None) -> None:
        self.c.publish_read(port, value)

    def publish_sink(self, port: int, on: bool) -> None:
        self.c.publish_sink(port, on)

    # -- what the VM calls ----------------------------------------------------------
    def drain(self) -> None:
        """Replay queued writes through the bus, and add the reads answered
        natively to the bus's per-port counts."""
        if not self.c.pending():
            return
        queued, reads = self.c.take()
        bus = self.bus
        counts, floating = bus.io_counts, bus.unhandled_reads
        for port, n in reads:
            counts[port] = counts.get(port, 0) + n
            if bus.owner(port) is None:     # a floating read (writes are replayed)
                floating[port] = floating.get(port, 0) + n
        write = self.bus.write
        for i in range(0, len(queued), 3):
            write(queued[i] | queued[i + 1] << 8, 1, queued[i + 2])

    def stop(self) -> None:
        """The run is over: nothing more is answered natively."""
        self.c.enabled = False

    @property
    def answered(self) -> int:
        return self.c.fast_reads + self.c.fast_writes
