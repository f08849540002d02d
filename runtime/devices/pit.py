"""The 8254 programmable interval timer (0x40-0x43), clocked by virtual time.

Nothing counts in the background: the state of a channel is a function of the
number of PIT input clocks since it started counting, and that number comes
from virtual time, `ticks = now * PIT_HZ // cpu_hz` (integer, so exact and
deterministic).  The reverse, the first instruction at which tick T has
happened, is `ceil(T * cpu_hz / PIT_HZ)`; `next_event()` reports that for the
next rising edge of channel 0's OUT, which is IRQ 0.

Modelled: channels 0-2, modes 0-5 (6/7 alias 2/3), lo/hi/lo-hi access, binary
and BCD counts, the counter-latch and read-back commands, status bytes, gates
(channel 2's from port 0x61, see port61.py; 0 and 1 are tied high).
Simplified: a new count written while a mode 2/3 channel runs takes effect at
once (the chip waits for the end of the period); the one-clock load delay
after a count is written is not modelled.
"""
from __future__ import annotations

from bt.machine import PIT_HZ

from . import regs
from .base import Device


def pit_ticks(now: int, cpu_hz: int) -> int:
    """PIT input clocks elapsed by virtual time `now` (instructions)."""
    return now * PIT_HZ // cpu_hz


def instr_at_tick(ticks: int, cpu_hz: int) -> int:
    """First virtual instruction count at which `ticks` PIT clocks have elapsed."""
    return -(-ticks * cpu_hz // PIT_HZ)


def _to_bcd(n: int) -> int:
    return int(str(n % 10000), 16)


def _from_bcd(v: int) -> int:
    out = 0
    for shift in (12, 8, 4, 0):
        out = out * 10 + min((v >> shift) & 0xF, 9)
    return out


class Channel:
    """One counter of the 8254."""

    def __init__(self, index: int, gate: bool):
        self.index = index
        self.gate = gate
        self.mode = 0
        self.access = regs.PIT_ACCESS_LOHI
        self.bcd = False
        self.reload: int | None = None     # N (1..65536 or 1..10000); None: no count yet
        self.elapsed_base = 0              # clocks counted before `run_since`
        self.run_since: int | None = None  # tick counting (re)started; None: stopped
        self.triggered = False             # modes 1/5: a gate edge started the count
        self._write_low: int | None = None
        self._read_high_next = False
        self._count_latch: list[int] = []
        self._status_latch: int | None = None

    # --- state as a function of time ---------------------------------------
    def elapsed(self, t: int) -> int:
        return self.elapsed_base + (t - self.run_since if self.run_since is not None else 0)

    def out(self, t: int) -> bool:
        n, mode = self.reload, self.mode
        if n is None:
            return mode != 0
        e = self.elapsed(t)
        if mode in (0, 1):
            if mode == 1 and not self.triggered:
                return True
            return e >= n
        if mode in (2, 3) and not self.gate:
            return True
        if mode == 2:
            return n < 2 or e % n != n - 1
        if mode == 3:
            return e % n < (n + 1) // 2
        if mode == 5 and not self.triggered:
            return True
        return e != n                                   # modes 4/5: one-clock low strobe

    def count(self, t: int) -> int:
        n = self.reload
        if n is None:
            return 0
        e = self.elapsed(t)
        modulus = 10000 if self.bcd else 0x10000
        if self.mode == 2:
            c = n - e % n
        elif self.mode == 3:
            phase = e % n
            half = (n + 1) // 2
            c = n - 2 * (phase if phase < half else phase - half)
        else:
            c = (n - e) % modulus                       # counts on through zero
        c %= modulus
        return _to_bcd(c) if self.bcd else c

    def next_edge(self, t: int) -> int | None:
        """Absolute tick of OUT's next rising edge after tick `t`, or None."""
        n = self.reload
        if n is None or self.run_since is None:
            return None
        e = self.elapsed(t)
        if self.mode in (0, 1):
            target = n if e < n else None
        elif self.mode in (4, 5):
            target = n + 1 if e < n + 1 else None
        else:
            target = (e // n + 1) * n
        if target is None:
            return None
        return self.run_since + (target - self.elapsed_base)

    def running(self) -> bool:
        return self.run_since is not None

    def native_state(self) -> tuple | None:
        """What a native one-byte read needs to answer as `read` would
        (runtime/_iofast.c "The PIT's counter reads"), or None while a read
        does more than count, toggle the lo/hi flip-flop or pop a count
        latch's bytes: a pending status latch, BCD, no count loaded, or a
        mode other than 0, 2, 3."""
        if (self._status_latch is not None or self.bcd
                or self.reload is None or self.mode not in (0, 2, 3)):
            return None
        return (self.mode, self.access, self.reload, self.elapsed_base,
                -1 if self.run_since is None else self.run_since, self._read_high_next,
                bytes(self._count_latch))

    # --- programming ------------------------------------------------------------
    def control(self, access: int, mode: int, bcd: bool) -> None:
        self.access = access
        self.mode = mode if mode < 6 else mode - 4
        self.bcd = bcd
        self.reload = None
        self.elapsed_base = 0
        self.run_since = None
        self.triggered = False
        self._write_low = None
        self._read_high_next = False
        self._count_latch = []
        self._status_latch = None

    def write(self, value: int, t: int) -> None:
        if self.access == regs.PIT_ACCESS_LO:
            self._load(value, t)
        elif self.access == regs.PIT_ACCESS_HI:
            self._load(value << 8, t)
        elif self._write_low is None:
            self._write_low = value
        else:
            low, self._write_low = self._write_low, None
            self._load(low | value << 8, t)

    def _load(self, raw: int, t: int) -> None:
        if self.bcd:
            n = _from_bcd(raw) or 10000
        else:
            n = raw or 0x10000
        self.reload = n
        self.elapsed_base = 0
        gated_start = self.mode in (1, 5)
        self.triggered = False
        self.run_since = t if (self.gate and not gated_start) else None

    def set_gate(self, gate: bool, t: int) -> None:
        if gate == self.gate:
            return
        self.gate = gate
        if self.reload is None:
            return
        if self.mode in (1, 5):
            if gate:                                    # rising edge (re)triggers
                self.triggered = True
                self.elapsed_base = 0
                self.run_since = t
            return
        if gate:
            if self.mode in (2, 3):                     # rising edge reloads
                self.elapsed_base = 0
            self.run_since = t
        else:
            self.elapsed_base = self.elapsed(t)
            self.run_since = None

    def latch_count(self, t: int) -> None:
        if self._count_latch:
            return                                      # first latch holds until read
        c = self.count(t)
        lo, hi = c & 0xFF, (c >> 8) & 0xFF
        self._count_latch = {regs.PIT_ACCESS_LO: [lo], regs.PIT_ACCESS_HI: [hi]}.get(
            self.access, [lo, hi])

    def latch_status(self, t: int) -> None:
        if self._status_latch is not None:
            return
        self._status_latch = ((regs.PIT_STATUS_OUT if self.out(t) else 0)
                              | (regs.PIT_STATUS_NULL if self.reload is None else 0)
                              | self.access << 4 | self.mode << 1 | int(self.bcd))

    def read(self, t: int) -> int:
        if self._status_latch is not None:
            value, self._status_latch = self._status_latch, None
            return value
        if self._count_latch:
            return self._count_latch.pop(0)
        c = self.count(t)
        if self.access == regs.PIT_ACCESS_LO:
            return c & 0xFF
        if self.access == regs.PIT_ACCESS_HI:
            return (c >> 8) & 0xFF
        high, self._read_high_next = self._read_high_next, not self._read_high_next
        return (c >> 8) & 0xFF if high else c & 0xFF


class PIT(Device):
    name = "pit"
    ports = (range(regs.PIT_CH0, regs.PIT_CONTROL + 1),)

    def __init__(self):
        # Gates: channels 0 and 1 are tied high on a PC; channel 2's is port 0x61 bit 0.
        self.channels = [Channel(0, True), Channel(1, True), Channel(2, False)]
        self._next_irq_tick: int | None = None
        self.irq_raised = 0
        self.irq_coalesced = 0

    # --- native counter reads (runtime/iofast.py) ---------------------------------
    # While a channel is published, one-byte reads of its port are answered by
    # the C `in` hook from virtual time, which toggles the lo/hi flip-flop and
    # pops a pending count latch there.  Every Python access to the PIT's ports
    # or gate first takes both back (`_take_back`) and ends by republishing
    # (`publish`).  tick and next_event need nothing back: channel 0's IRQ
    # edges depend on neither, and a read changes nothing else.
    def publish(self) -> None:
        fast = self.fast
        if fast is None or not fast.timers:
            return
        for ch in self.channels:
            fast.publish_timer(ch.index, ch.native_state())

    def _take_back(self) -> None:
        fast = self.fast
        if fast is None or not fast.timers:
            return
        for ch in self.channels:
            if ch.native_state() is not None:        # published: both are native
                ch._read_high_next, latch = fast.timer_take(ch.index)
                ch._count_latch = list(latch)

    def _t(self) -> int:
        return pit_ticks(self.link.now(), self.link.cpu_hz)

    def _reschedule(self, t: int) -> None:
        self._next_irq_tick = self.channels[0].next_edge(t)

    # --- ports ----------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        if port == regs.PIT_CONTROL:
            return 0xFF                                  # the control register is write-only
        self._take_back()
        value = self.channels[port - regs.PIT_CH0].read(self._t())
        self.publish()
        return value

    def write(self, port: int, size: int, value: int) -> None:
        self._take_back()
        self._write(port, value)
        self.publish()

    def _write(self, port: int, value: int) -> None:
        t = self._t()
        if port != regs.PIT_CONTROL:
            ch = self.channels[port - regs.PIT_CH0]
            ch.write(value, t)
            if ch.index == 0:
                self._reschedule(t)
            return
        select = value >> 6
        if select == regs.PIT_READBACK:
            for ch in self.channels:
                if value & (2 << ch.index):
                    if not value & 0x20:
                        ch.latch_count(t)
                    if not value & 0x10:
                        ch.latch_status(t)
            return
        ch = self.channels[select]
        access = (value >> 4) & 3
        if access == regs.PIT_ACCESS_LATCH:
            ch.latch_count(t)
            return
        ch.control(access, (value >> 1) & 7, bool(value & 1))
        if ch.index == 0:
            self._reschedule(t)

    # --- channel 2, for port 0x61 -----------------------------------------------
    def set_gate2(self, gate: bool) -> None:
        self._take_back()
        self.channels[2].set_gate(gate, self._t())
        self.publish()

    def out2(self) -> bool:
        return self.channels[2].out(self._t())

    # --- virtual time -----------------------------------------------------------
    def next_event(self) -> int | None:
        if self._next_irq_tick is None:
            return None
        return instr_at_tick(self._next_irq_tick, self.link.cpu_hz)

    def tick(self, now: int) -> None:
        due = self._next_irq_tick
        if due is None:
            return
        t = pit_ticks(now, self.link.cpu_hz)
        if t < due:
            return
        # Edges that fell inside one slice merge into one request, as the 8259's
        # IRR would merge them; the lost ones are counted.
        self.link.raise_irq(regs.PIT_IRQ)
        self.irq_raised += 1
        self._reschedule(t)
        n = self.channels[0].reload
        if self._next_irq_tick is not None and n:
            self.irq_coalesced += (t - due) // n

    def stats(self) -> dict:
        return {"irq0_raised": self.irq_raised, "irq0_coalesced": self.irq_coalesced}
