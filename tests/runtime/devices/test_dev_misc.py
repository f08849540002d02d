from bt.machine import MachineConfig
from runtime.devices import attach_standard_devices
from runtime.devices.bus import IOBus
from runtime.devices.debugexit import DebugExit
from runtime.devices.i8042 import I8042
from runtime.devices.port80 import PostCode

from devlink import FakeLink, bus_with


def test_debug_exit_stops_with_byte():
    bus, link = bus_with(DebugExit())
    bus.write(0xF4, 1, 0x2A)
    assert link.stops == [("debug-exit", 0x2A)]
    bus.write(0xF4, 2, 0x1203)                       # split: low byte to 0xF4
    assert link.stops[-1] == ("debug-exit", 0x03)
    assert bus.unhandled_writes == {0xF5: 1}


def test_port80_accepted_and_not_unhandled():
    bus, link = bus_with(PostCode())
    for i in range(1000):
        bus.write(0x80, 1, i & 0xFF)
    assert bus.unhandled_writes == {} and bus.io_counts[0x80] == 1000
    assert bus.owner(0x80).last == 999 & 0xFF


def test_i8042_reset_command():
    bus, link = bus_with(I8042())
    assert bus.read(0x64, 1) & 0x03 == 0             # kb_wait: input buffer empty
    bus.write(0x64, 1, 0xFE)
    assert link.stops == [("reset", 0)]


def test_i8042_output_port_reset_and_commands():
    kbc = I8042()
    bus, link = bus_with(kbc)
    bus.write(0x64, 1, 0xAA)
    assert bus.read(0x64, 1) & 0x01
    assert bus.read(0x60, 1) == 0x55
    assert not bus.read(0x64, 1) & 0x01
    bus.write(0x64, 1, 0x20)
    ctr = bus.read(0x60, 1)
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, ctr | 0x01)
    bus.write(0x64, 1, 0x20)
    assert bus.read(0x60, 1) == ctr | 0x01
    bus.write(0x64, 1, 0xD3)                         # aux loop-back
    bus.write(0x60, 1, 0x5A)
    assert bus.read(0x64, 1) & 0x21 == 0x21
    assert bus.read(0x60, 1) == 0x5A
    assert link.stops == []
    bus.write(0x64, 1, 0xD1)
    bus.write(0x60, 1, 0x02)                         # output port bit 0 clear: reset
    assert link.stops == [("reset", 0)]


def test_standard_devices_attached_in_one_place():
    cfg = MachineConfig(serial_input=b"uname -a\n")
    bus = IOBus()
    link = FakeLink(cfg.cpu_hz)
    devs = attach_standard_devices(bus, link, cfg)
    assert set(devs) == {"pic", "pit", "port61", "port92", "uart", "cmos", "i8042", "debug-exit",
                         "port80", "fw-cfg", "lapic"}
    link.pic = devs["pic"]
    for port, name in ((0x20, "pic"), (0xA1, "pic"), (0x43, "pit"), (0x61, "port61"), (0x92, "port92"),
                       (0x3F8, "uart"), (0x3FF, "uart"), (0x70, "cmos"), (0x64, "i8042"),
                       (0xF4, "debug-exit"), (0x80, "port80"), (0x510, "fw-cfg"), (0x511, "fw-cfg")):
        assert bus.owner(port) is devs[name], hex(port)
        assert devs[name].link is link
    assert devs["lapic"].mmio == ((0xFEE00000, 0x1000),) and devs["lapic"].link is link
    # Absent devices answer all ones: the ones Linux probes.
    for port in (0x2E, 0x2F, 0x4E, 0x4F, 0x87, 0x2F8, 0x3E8, 0x279, 0x4D0):
        assert bus.read(port, 1) == 0xFF
    # Scripted input is wired with 1 ms per byte of virtual time.
    assert devs["uart"].script.interval == cfg.cpu_hz // 1000
    bus.write(0x3F9, 1, 0x01)
    assert bus.next_event() == cfg.cpu_hz // 1000
    # Timer through the bus reaches the PIC.
    for port, v in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0x00),
                    (0x43, 0x34), (0x40, 0x9B), (0x40, 0x2E)):
        bus.write(port, 1, v)
    ev = devs["pit"].next_event()
    bus.tick(ev)
    assert devs["pic"].acknowledge() == 0x20


def test_standard_devices_are_deterministic():
    def run():
        cfg = MachineConfig()
        bus = IOBus()
        link = FakeLink(cfg.cpu_hz)
        devs = attach_standard_devices(bus, link, cfg)
        link.pic = devs["pic"]
        bus.write(0x43, 1, 0x34)
        bus.write(0x40, 1, 0xA5)
        bus.write(0x40, 1, 0x12)
        times = []
        for _ in range(50):
            t = bus.next_event()
            link.t = t
            bus.tick(t)
            times.append((t, bus.read(0x40, 1), bus.read(0x40, 1)))
        return times, link.irq_log, bus.report()
    assert run() == run()
