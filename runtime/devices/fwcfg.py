"""QEMU's firmware configuration interface (fw_cfg), port flavour: a guest
selects an item by writing its 16-bit key to 0x510 and reads the item's bytes
one at a time from 0x511.  Test kernels written for QEMU (kvm-unit-tests
asks for the CPU count) find the machine described here.

Items: the signature "QEMU", the interface ID (1: the traditional interface
only, no DMA), the RAM size, the CPU count and the maximum CPU count (1), and
an empty file directory.  Any other item, and reads past an item's end, give
zeros, as QEMU answers a key it does not know.  Writes to the data port are
ignored (QEMU 2.4+ makes items read-only).
"""
from __future__ import annotations

import struct

from . import regs
from .base import Device


class FwCfg(Device):
    name = "fw-cfg"
    ports = (range(regs.FW_CFG_SELECTOR, regs.FW_CFG_DATA + 1),)
    io_width = 2                        # the selector is a 16-bit port

    def __init__(self, mem_bytes: int, cpus: int = 1):
        self.items = {
            regs.FW_CFG_SIGNATURE: b"QEMU",
            regs.FW_CFG_ID: struct.pack("<I", 1),
            regs.FW_CFG_RAM_SIZE: struct.pack("<Q", mem_bytes),
            regs.FW_CFG_NB_CPUS: struct.pack("<H", cpus),
            regs.FW_CFG_MAX_CPUS: struct.pack("<H", cpus),
            regs.FW_CFG_FILE_DIR: struct.pack(">I", 0),     # the directory is big endian
        }
        self.selector = 0
        self.offset = 0
        self.selects: dict[int, int] = {}

    def read(self, port: int, size: int) -> int:
        if port != regs.FW_CFG_DATA:
            return 0
        value = 0
        for i in range(size):
            value |= self._next_byte() << (8 * i)
        return value

    def _next_byte(self) -> int:
        data = self.items.get(self.selector & 0x3FFF, b"")
        b = data[self.offset] if self.offset < len(data) else 0
        self.offset += 1
        return b

    def write(self, port: int, size: int, value: int) -> None:
        if port == regs.FW_CFG_SELECTOR:
            self.selector = value & 0xFFFF
            self.offset = 0
            self.selects[self.selector] = self.selects.get(self.selector, 0) + 1

    def stats(self) -> dict:
        return {"selects": {f"{k:#x}": n for k, n in sorted(self.selects.items())}} if self.selects else {}
