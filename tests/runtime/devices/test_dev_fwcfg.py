"""fw_cfg (runtime/devices/fwcfg.py): select an item at 0x510, read it at 0x511."""
import struct

import pytest

from runtime.devices.fwcfg import FwCfg

from devlink import bus_with


def read_item(bus, key: int, n: int) -> bytes:
    bus.write(0x510, 2, key)
    return bytes(bus.read(0x511, 1) for _ in range(n))


@pytest.mark.parametrize("key, n, want", [
    (0x00, 4, b"QEMU"),
    (0x01, 4, struct.pack("<I", 1)),
    (0x03, 8, struct.pack("<Q", 128 << 20)),
    (0x05, 2, struct.pack("<H", 1)),
    (0x0F, 2, struct.pack("<H", 1)),
    (0x19, 4, b"\0\0\0\0"),          # an empty file directory
    (0x11, 8, bytes(8)),             # an item QEMU does not know: zeros
])
def test_items(key, n, want):
    bus, _ = bus_with(FwCfg(128 << 20))
    assert read_item(bus, key, n) == want


def test_reads_past_the_end_give_zeros_and_a_new_select_restarts():
    bus, _ = bus_with(FwCfg(1 << 20))
    assert read_item(bus, 0, 6) == b"QEMU\0\0"
    assert read_item(bus, 0, 2) == b"QE"
    bus.write(0x511, 1, 0x55)         # the data port is read only
    assert read_item(bus, 0, 4) == b"QEMU"
