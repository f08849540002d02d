from runtime.devices.cmos import CMOS

from devlink import FakeLink, bus_with

HZ = 100_000_000


def make(epoch=1_700_000_000, mem=64 << 20):
    cmos = CMOS(epoch=epoch, mem_bytes=mem)
    bus, link = bus_with(cmos, link=FakeLink(HZ))
    return cmos, bus, link


def rd(bus, index):
    bus.write(0x70, 1, index)
    return bus.read(0x71, 1)


def test_date_bcd_24h_default():
    # 1_700_000_000 = Tuesday 2023-11-14 22:13:20 UTC
    cmos, bus, link = make()
    assert rd(bus, 0x0B) == 0x02
    assert [rd(bus, i) for i in (0, 2, 4, 6, 7, 8, 9, 0x32)] == \
        [0x20, 0x13, 0x22, 0x03, 0x14, 0x11, 0x23, 0x20]


def test_time_advances_with_virtual_time_only():
    cmos, bus, link = make()
    link.t = 41 * HZ - 1
    assert rd(bus, 0) == 0x00 and rd(bus, 2) == 0x14   # 22:13:59 -> 22:14:00 at 40 s
    link.t = 41 * HZ
    assert rd(bus, 0) == 0x01
    link.t = 3 * 3600 * HZ                              # past midnight: next day
    assert (rd(bus, 4), rd(bus, 7), rd(bus, 6)) == (0x01, 0x15, 0x04)


def test_binary_mode_and_12_hour():
    cmos, bus, link = make()
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x06)                            # binary, 24h
    assert (rd(bus, 4), rd(bus, 9), rd(bus, 0)) == (22, 23, 20)
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x04)                            # binary, 12h
    assert rd(bus, 4) == 0x80 | 10                      # 10 PM


def test_register_a_uip_always_clear_and_d_valid():
    cmos, bus, link = make()
    for t in range(0, HZ, HZ // 7):
        link.t = t
        assert not rd(bus, 0x0A) & 0x80
    bus.write(0x70, 1, 0x0A)
    bus.write(0x71, 1, 0xA6)                            # UIP is read-only
    assert rd(bus, 0x0A) == 0x26
    assert rd(bus, 0x0D) == 0x80
    assert rd(bus, 0x0C) == 0x00


def test_nmi_bit_of_index_ignored_and_ram_bytes():
    cmos, bus, link = make()
    assert rd(bus, 0x80 | 0x09) == 0x23
    bus.write(0x70, 1, 0x40)
    bus.write(0x71, 1, 0x5A)
    assert rd(bus, 0x40) == 0x5A
    assert rd(bus, 0x15) | rd(bus, 0x16) << 8 == 640
    assert rd(bus, 0x17) | rd(bus, 0x18) << 8 == 63 * 1024
    assert rd(bus, 0x30) | rd(bus, 0x31) << 8 == 63 * 1024


def test_writing_time_sets_the_clock():
    cmos, bus, link = make()
    bus.write(0x70, 1, 0x09)
    bus.write(0x71, 1, 0x30)                            # year 2030
    bus.write(0x70, 1, 0x04)
    bus.write(0x71, 1, 0x08)                            # 08h
    assert (rd(bus, 9), rd(bus, 8), rd(bus, 7), rd(bus, 4), rd(bus, 2)) == \
        (0x30, 0x11, 0x14, 0x08, 0x13)
    link.t = 5 * HZ
    assert rd(bus, 0) == 0x25


def test_epoch_from_config_is_deterministic():
    a, bus_a, _ = make(epoch=0)
    assert [rd(bus_a, i) for i in (9, 8, 7, 0x32)] == [0x70, 0x01, 0x01, 0x19]
