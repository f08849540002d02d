"""pc-testdev and port 0x92 on the bus alone (runtime/devices/pctestdev.py,
runtime/devices/port92.py): the port map and semantics of QEMU's hw/misc/pc-testdev.c
and of QEMU's hw/i386/port92.c."""
from bt.machine import PC_TESTDEV_RAM, MachineConfig
from runtime.devices import attach_standard_devices
from runtime.devices.bus import IOBus
from runtime.devices.pctestdev import PCTestDev
from runtime.devices.pic import PICPair
from runtime.devices.port92 import SystemControlA

from devlink import FakeLink, bus_with


def test_data_register_any_width_any_offset():
    bus, _ = bus_with(PCTestDev())
    bus.write(0xE0, 4, 0x11223344)
    assert [bus.read(0xE0 + i, 1) for i in range(4)] == [0x44, 0x33, 0x22, 0x11]
    assert bus.read(0xE1, 2) == 0x2233 and bus.read(0xE8, 4) == 0x11223344
    bus.write(0xEA, 2, 0xAABB)                   # the byte-wise window: the same register
    assert bus.read(0xE0, 4) == 0xAABB3344
    bus.write(0xE3, 4, 0x55667788)               # bytes past the register's fourth are lost
    assert bus.read(0xE0, 4) == 0x88BB3344
    assert bus.unhandled_writes == {} and bus.unhandled_reads == {}


def test_flush_port_takes_dwords_only_and_is_write_only():
    dev = PCTestDev()
    bus, _ = bus_with(dev)
    bus.write(0xE4, 4, 0x12345000)
    bus.write(0xE4, 1, 0x00)                     # QEMU refuses other widths
    assert bus.read(0xE4, 4) == 0xFFFFFFFF
    assert dev.stats() == {"flushes": 1, "ignored": 2}


def test_irq_lines_follow_levels_to_the_pic():
    pic = PICPair()
    dev = PCTestDev()
    bus, link = bus_with(dev, link=FakeLink(pic=pic))
    bus.write(0x2003, 1, 1)
    bus.write(0x2003, 1, 7)                      # still high: no second edge
    bus.write(0x200C, 1, 1)
    bus.write(0x200C, 1, 0)                      # dropped before it was taken
    bus.write(0x2010, 1, 1)                      # line 16: an I/O APIC's, absent here
    bus.write(0x2003, 2, 0)                      # not a byte: ignored, the line stays high
    assert link.irq_log == [("raise", 3), ("raise", 12), ("lower", 12)]
    assert pic.master.irr == 1 << 3 and pic.slave.irr == 0
    assert dev.levels[3] and dev.levels[16]
    assert dev.stats() == {"irq_writes": 5, "ignored": 1}
    assert bus.read(0x2003, 1) == 0xFF           # write-only


def test_testdev_is_optional_and_brings_its_ram():
    def names(cfg):
        return set(attach_standard_devices(IOBus(), FakeLink(cfg.cpu_hz), cfg))
    assert "pc-testdev" not in names(MachineConfig())
    assert "pc-testdev" in names(MachineConfig(pc_testdev=True))
    assert PCTestDev.ram_ranges == (PC_TESTDEV_RAM,) == ((0xFF000000, 0x10000),)
    assert PCTestDev.mmio == ()


def test_port92_reads_back_and_resets_on_a_rising_bit0():
    dev = SystemControlA()
    bus, link = bus_with(dev)
    assert bus.read(0x92, 1) == 0x02             # A20 enabled, as after a BIOS
    bus.write(0x92, 1, 0x00)                     # A20 "off": stored, counted
    assert bus.read(0x92, 1) == 0x00 and link.stops == []
    bus.write(0x92, 1, 0x03)
    assert link.stops == [("reset", 0)]
    bus.write(0x92, 1, 0x03)                     # bit 0 already set: no edge
    assert link.stops == [("reset", 0)]
    assert dev.stats() == {"reset_requests": 1, "a20_off_writes": 1}
