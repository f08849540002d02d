import pytest

from bt.errors import VMMError
from runtime.devices.base import Device
from runtime.devices.bus import IOBus
from runtime.devices.port80 import PostCode

from devlink import bus_with


class Recorder(Device):
    name = "rec"
    ports = (range(0x300, 0x302),)

    def __init__(self):
        self.log = []

    def read(self, port, size):
        self.log.append(("r", port, size))
        return 0x10 + (port & 0xF)

    def write(self, port, size, value):
        self.log.append(("w", port, size, value))


class Wide(Recorder):
    name = "wide"
    ports = (range(0x400, 0x404),)
    io_width = 4

    def read(self, port, size):
        self.log.append(("r", port, size))
        return 0x123456789A


def test_unowned_ports_read_all_ones_and_are_counted():
    bus = IOBus()
    assert bus.read(0x2E, 1) == 0xFF
    assert bus.read(0x2E, 1) == 0xFF
    assert bus.read(0x1234, 2) == 0xFFFF
    assert bus.read(0x1234, 4) == 0xFFFFFFFF
    bus.write(0x87, 1, 0x12)
    assert bus.unhandled_reads[0x2E] == 2
    # A wide access to nobody counts every byte port it touched.
    assert bus.unhandled_reads[0x1234] == 2 and bus.unhandled_reads[0x1237] == 1
    assert bus.unhandled_writes == {0x87: 1}
    assert bus.io_counts == {0x2E: 2, 0x1234: 2, 0x87: 1}


def test_owned_port_dispatch_and_io_counts():
    rec = Recorder()
    bus, _ = bus_with(rec)
    assert bus.read(0x301, 1) == 0x11
    bus.write(0x300, 1, 0x1FF)               # value masked to the access size
    assert rec.log == [("r", 0x301, 1), ("w", 0x300, 1, 0xFF)]
    assert bus.io_counts == {0x301: 1, 0x300: 1}
    assert bus.unhandled_reads == {} and bus.unhandled_writes == {}


def test_wide_access_to_8bit_device_is_split_like_isa():
    rec = Recorder()
    bus, _ = bus_with(rec)
    # 0x300, 0x301 belong to the recorder; 0x302, 0x303 to nobody.
    assert bus.read(0x300, 4) == 0xFFFF1110
    bus.write(0x300, 2, 0xBEEF)
    assert rec.log[-2:] == [("w", 0x300, 1, 0xEF), ("w", 0x301, 1, 0xBE)]
    assert bus.unhandled_reads == {0x302: 1, 0x303: 1}
    assert bus.io_counts[0x300] == 2


def test_wide_device_gets_whole_access_masked():
    w = Wide()
    bus, _ = bus_with(w)
    assert bus.read(0x400, 4) == 0x3456789A
    assert bus.read(0x400, 2) == 0x789A
    assert w.log == [("r", 0x400, 4), ("r", 0x400, 2)]


def test_overlapping_ports_rejected():
    bus = IOBus()
    bus.attach(PostCode())
    with pytest.raises(VMMError, match="0x80"):
        bus.attach(PostCode())


def test_bad_size_rejected():
    with pytest.raises(VMMError):
        IOBus().read(0x80, 3)


def test_attach_sets_link_and_report_is_hex_keyed():
    bus, link = bus_with(PostCode())
    bus.write(0x80, 1, 0x42)
    bus.read(0x61, 1)
    assert bus.owner(0x80).link is link
    assert bus.owner(0x80).last == 0x42
    rep = bus.report()
    assert rep["io_by_port"] == {"0x61": 1, "0x80": 1}
    assert rep["unhandled_port_reads"] == {"0x61": 1}


class Timed(Device):
    name = "timed"

    def __init__(self, when):
        self.when = when
        self.ticks = []

    def next_event(self):
        return self.when

    def tick(self, now):
        self.ticks.append(now)


def test_next_event_is_min_and_tick_reaches_all():
    a, b, c = Timed(500), Timed(None), Timed(300)
    bus, _ = bus_with(a, b, c, PostCode())
    assert bus.next_event() == 300
    bus.tick(42)
    assert a.ticks == b.ticks == c.ticks == [42]
    assert IOBus().next_event() is None
