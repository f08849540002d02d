"""The PIT's counter reads answered by the native `in` hook (runtime/_iofast.c,
"The PIT's counter reads"; issue 19) against the Python model.

Two PITs get the same port operations at the same virtual times: one has no
native hooks (every read is Channel.read), the other publishes to a real
IoFast whose `in` hook is called directly, with a virtual-time function that
returns the fake link's clock.  Reads through the hook, reads through the
bus (which take the flip-flop back) and writes are interleaved; every byte
must match the Python model's."""
from __future__ import annotations

import ctypes
import random

import pytest

from bt.machine import PIT_HZ
from runtime import _iofast
from runtime.devices.pit import PIT
from runtime.devices.port61 import SystemControlB
from runtime.iofast import NativeIO

from devlink import FakeLink, bus_with

HZ = 100_000_000
_VTIME = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p)
_IN = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
_OUT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                        ctypes.c_void_p)


class Native:
    """A PIT behind a real IoFast; `slow` counts reads that were not answered natively."""

    def __init__(self, cpu_hz=HZ):
        self.pit = PIT()
        self.bus, self.link = bus_with(self.pit, SystemControlB(self.pit), link=FakeLink(cpu_hz))
        self.slow = 0

        def slow_in(_uc, port, size, _ud):
            self.slow += 1
            return self.bus.read(port, size)
        self._keep = [_IN(slow_in), _OUT(lambda *a: None), _VTIME(lambda _c: self.link.t)]
        addr = [ctypes.cast(k, ctypes.c_void_p).value for k in self._keep]
        io = NativeIO.__new__(NativeIO)             # its device-facing half, with no engine
        io.c = _iofast.IoFast(addr[0], addr[1])
        io.c.set_timer_clock(addr[2], 0, 0x40, cpu_hz, PIT_HZ)
        io.timers = True
        self.io = io
        self.pit.set_fast(io)
        self._in = _IN(_iofast.callbacks()[0])

    def native_in(self, port: int) -> int:
        return self._in(None, port, 1, id(self.io.c))


def twins(cpu_hz=HZ):
    n = Native(cpu_hz)
    pit = PIT()
    bus, link = bus_with(pit, SystemControlB(pit), link=FakeLink(cpu_hz))
    return n, bus, link


def both_write(n, bus, link, port, value):
    n.bus.write(port, 1, value)
    bus.write(port, 1, value)


@pytest.mark.parametrize("mode", [0, 2, 3])
@pytest.mark.parametrize("access", [1, 2, 3])
@pytest.mark.parametrize("channel", [0, 2])
def test_native_reads_match_the_python_model(mode, access, channel):
    rng = random.Random(mode * 100 + access * 10 + channel)
    for reload in (1, 2, 3, 4773, 0xFFFF, 0):       # 0: 0x10000
        n, bus, link = twins(rng.choice((HZ, 3_000_000, 1_193_182, 2_000_000_007)))
        t = rng.randrange(10**9)
        n.link.t = link.t = t
        both_write(n, bus, link, 0x61, 1)            # channel 2's gate high
        both_write(n, bus, link, 0x43, channel << 6 | access << 4 | mode << 1)
        port = 0x40 + channel
        if access != 2:
            both_write(n, bus, link, port, reload & 0xFF)
        if access != 1:
            both_write(n, bus, link, port, reload >> 8)
        native = 0
        for _ in range(300):
            t += rng.choice((0, 1, 7, 83, 4000, rng.randrange(10**7)))
            n.link.t = link.t = t
            op = rng.random()
            if op < 0.8:                              # a read the hook answers
                assert n.native_in(port) == bus.read(port, 1)
                native += 1
            elif op < 0.9:                            # a Python read: takes the flip-flop back
                assert n.bus.read(port, 1) == bus.read(port, 1)
            elif op < 0.95 and channel == 2:          # gate low/high: stops, restarts
                v = rng.choice((0, 1))
                both_write(n, bus, link, 0x61, v)
            else:                                     # counter latch: its bytes are read first
                both_write(n, bus, link, 0x43, channel << 6)
        assert n.slow == 0 and n.io.c.timer_reads == native > 150


def test_latch_is_read_natively_bcd_and_unsupported_modes_take_the_slow_path():
    n, bus, link = twins()
    n.link.t = link.t = 12345
    both_write(n, bus, link, 0x43, 0x34)              # channel 0, lo/hi, mode 2
    both_write(n, bus, link, 0x40, 0x10)
    both_write(n, bus, link, 0x40, 0x27)
    both_write(n, bus, link, 0x43, 0x00)              # latch channel 0
    n.link.t = link.t = 99999
    assert n.native_in(0x40) == bus.read(0x40, 1)     # the latch's LSB natively
    both_write(n, bus, link, 0x43, 0x00)              # a second latch holds the first (Python)
    n.link.t = link.t = 123456
    assert n.native_in(0x40) == bus.read(0x40, 1)     # the first latch's MSB
    assert [n.native_in(0x40), n.native_in(0x40)] == [bus.read(0x40, 1), bus.read(0x40, 1)]
    assert n.slow == 0
    for control in (0x35, 0x32, 0x38):                # BCD; mode 1; mode 4
        both_write(n, bus, link, 0x43, control)
        both_write(n, bus, link, 0x40, 0x50)
        both_write(n, bus, link, 0x40, 0x00)
        before = n.slow
        n.link.t = link.t = link.t + 5000
        assert n.native_in(0x40) == bus.read(0x40, 1)
        assert n.slow == before + 1
    both_write(n, bus, link, 0x43, 0x34)              # control word, no count yet: slow
    before = n.slow
    assert n.native_in(0x40) == bus.read(0x40, 1)
    assert n.slow == before + 1


def test_status_latch_and_read_back_take_the_slow_path():
    n, bus, link = twins()
    both_write(n, bus, link, 0x61, 1)
    both_write(n, bus, link, 0x43, 0xB0)              # channel 2, lo/hi, mode 0
    both_write(n, bus, link, 0x42, 0xFF)
    both_write(n, bus, link, 0x42, 0xFF)
    n.link.t = link.t = 777
    assert n.native_in(0x42) == bus.read(0x42, 1)     # LSB natively: the flip-flop is native now
    both_write(n, bus, link, 0x43, 0xE8)              # read-back: status of channel 2
    got = [n.native_in(0x42) for _ in range(3)]
    assert got == [bus.read(0x42, 1) for _ in range(3)]   # status, then MSB, LSB
    assert n.slow == 1                                # only the status byte exits
