"""QEMU's pc-testdev (hw/misc/pc-testdev.c), which kvm-unit-tests expects
(its x86/run passes `-device pc-testdev`); present when
`MachineConfig.pc_testdev` is set (`bt-run --pc-testdev`).

What a guest finds, as in QEMU:

* ports 0xE0-0xE3: one 32-bit register; an access of n bytes at 0xE0+k reads
  or writes its bytes k..k+n-1 (those past the fourth are lost);
* ports 0xE8-0xEB: the same register (QEMU splits these accesses into bytes:
  the same result);
* ports 0xE4-0xE7: a dword write names a guest page QEMU "flushes" (it
  mprotects the host page, to make KVM drop its mappings); nothing a guest can
  see, so only counted here.  Not readable: reads float to all ones;
* ports 0x2000-0x2017: a byte write sets ISA IRQ line (port - 0x2000) to
  (value != 0).  Lines 0-15 reach the 8259 pair (a rising level latches a
  request, a falling one withdraws one not yet taken: runtime/devices/pic.py);
  lines 16-23 go only to an I/O APIC, which this machine lacks: counted, no
  effect.  Wider writes are ignored (QEMU accepts only bytes there);
* 64 KiB of RAM at physical 0xFF000000 (QEMU's "iomem", kvm-unit-tests'
  IORAM_BASE_PHYS): plain memory here (`Device.ram_ranges`, mapped by
  runtime/mmio.py) -- QEMU answers it through callbacks so that KVM emulates
  the accesses, which is what emulator.flat tests; the values a guest reads
  back are the same.

The hypervisor area must then be elsewhere: bt.machine.DEFAULT_HYPER_BASE.
"""
from __future__ import annotations

from bt.machine import PC_TESTDEV_RAM

from . import regs
from .base import Device

PIC_LINES = 16


class PCTestDev(Device):
    name = "pc-testdev"
    ports = (range(regs.TESTDEV_DATA, regs.TESTDEV_DATA_BYTES + 4),
             range(regs.TESTDEV_IRQ, regs.TESTDEV_IRQ + regs.TESTDEV_IRQ_LINES))
    ram_ranges = (PC_TESTDEV_RAM,)
    io_width = 4

    def __init__(self):
        self.data = 0
        self.levels = [False] * regs.TESTDEV_IRQ_LINES
        self.flushes = 0
        self.irq_writes = 0
        self.ignored = 0            # accesses QEMU refuses (wrong width, reads of write-only ports)

    def _flush_port(self, port: int) -> bool:
        return regs.TESTDEV_FLUSH <= port < regs.TESTDEV_FLUSH + 4

    def read(self, port: int, size: int) -> int:
        if port >= regs.TESTDEV_IRQ or self._flush_port(port):
            self.ignored += 1
            return (1 << (8 * size)) - 1
        shift = (port & 3) * 8
        return (self.data >> shift) & ((1 << (8 * size)) - 1)

    def write(self, port: int, size: int, value: int) -> None:
        if port >= regs.TESTDEV_IRQ:
            if size != 1:
                self.ignored += 1
                return
            self._set_line(port - regs.TESTDEV_IRQ, value != 0)
            return
        if self._flush_port(port):
            if size == 4 and port == regs.TESTDEV_FLUSH:
                self.flushes += 1
            else:
                self.ignored += 1
            return
        shift = (port & 3) * 8
        mask = (((1 << (8 * size)) - 1) << shift) & 0xFFFFFFFF
        self.data = (self.data & ~mask) | ((value << shift) & mask)

    def _set_line(self, line: int, level: bool) -> None:
        self.irq_writes += 1
        was, self.levels[line] = self.levels[line], level
        if line >= PIC_LINES or level == was:
            return
        if level:
            self.link.raise_irq(line)
        else:
            self.link.lower_irq(line)

    def stats(self) -> dict:
        out = {}
        for key in ("flushes", "irq_writes", "ignored"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out
