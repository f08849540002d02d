"""The I/O port bus: routes every `in`/`out` of the guest to the device owning the port.

Every I/O instruction the guest executes passes through `read`/`write`, so the
dispatch is a 64 Ki-entry list indexed by port.  Ports nobody owns behave like
an empty ISA bus: reads float to all ones, writes vanish; both are counted per
port so the report shows what the guest probed (also when the native I/O
hooks answer them: `publish_floating`, runtime/iofast.py).
"""
from __future__ import annotations

from bt.errors import VMMError

from .base import Device, MachineLink

PORT_COUNT = 0x10000
ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


def _overrides(device: Device, method: str) -> bool:
    """True when the device's class defines its own `method` (not Device's no-op)."""
    return getattr(type(device), method) is not getattr(Device, method)


class IOBus:
    def __init__(self):
        self._owner: list[Device | None] = [None] * PORT_COUNT
        self.devices: list[Device] = []
        self._timed: list[Device] = []     # devices with next_event/tick of their own
        self.io_counts: dict[int, int] = {}
        self.unhandled_reads: dict[int, int] = {}
        self.unhandled_writes: dict[int, int] = {}
        self._fast = None                  # runtime/iofast.py, once floating ports are published

    # --- wiring -------------------------------------------------------------
    def attach(self, device: Device, link: MachineLink | None = None) -> Device:
        """Give `device` its ports (and its link to the machine, if given).

        Two devices claiming one port is a wiring bug, reported as VMMError."""
        claimed = [p for r in device.ports for p in r]
        for port in claimed:
            if not 0 <= port < PORT_COUNT:
                raise VMMError(f"device {device.name} claims port {port:#x} outside 0-0xffff")
            other = self._owner[port]
            if other is not None:
                raise VMMError(f"port {port:#x} claimed by both {other.name} and {device.name}")
        if link is not None:
            device.attach(link)
        if self._fast is not None:         # no longer floating: the device answers
            for port in claimed:
                self._fast.publish_read(port, None)
                self._fast.publish_sink(port, False)
        for port in claimed:
            self._owner[port] = device
        self.devices.append(device)
        if _overrides(device, "next_event") or _overrides(device, "tick"):
            self._timed.append(device)
        return device

    def publish_floating(self, fast) -> None:
        """Let `fast` (runtime/iofast.py) answer one-byte accesses of the ports
        nobody owns as `read`/`write` do (reads 0xFF, writes vanish), without an
        exit; the counts reach `io_counts` and the unhandled tables at its drain.
        A device attached later takes its ports back."""
        self._fast = fast
        fast.publish_floating(bytes(dev is None for dev in self._owner))

    def owner(self, port: int) -> Device | None:
        return self._owner[port & 0xFFFF]

    # --- the hot path -------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        if size not in ALL_ONES:
            raise VMMError(f"I/O read of size {size} at port {port:#x}")
        port &= 0xFFFF
        counts = self.io_counts
        counts[port] = counts.get(port, 0) + 1
        dev = self._owner[port]
        if dev is not None and size <= dev.io_width:
            return dev.read(port, size) & ALL_ONES[size]
        if dev is None and size == 1:
            self._count(self.unhandled_reads, port)
            return 0xFF
        # A wide access to 8-bit devices: one byte access per port, as on ISA.
        value = 0
        for i in range(size):
            value |= self._read_byte((port + i) & 0xFFFF) << (8 * i)
        return value

    def write(self, port: int, size: int, value: int) -> None:
        if size not in ALL_ONES:
            raise VMMError(f"I/O write of size {size} at port {port:#x}")
        port &= 0xFFFF
        counts = self.io_counts
        counts[port] = counts.get(port, 0) + 1
        dev = self._owner[port]
        value &= ALL_ONES[size]
        if dev is not None and size <= dev.io_width:
            dev.write(port, size, value)
            return
        if dev is None and size == 1:
            self._count(self.unhandled_writes, port)
            return
        for i in range(size):
            self._write_byte((port + i) & 0xFFFF, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, port: int) -> int:
        dev = self._owner[port]
        if dev is None:
            self._count(self.unhandled_reads, port)
            return 0xFF
        return dev.read(port, 1) & 0xFF

    def _write_byte(self, port: int, value: int) -> None:
        dev = self._owner[port]
        if dev is None:
            self._count(self.unhandled_writes, port)
        else:
            dev.write(port, 1, value)

    @staticmethod
    def _count(table: dict[int, int], port: int) -> None:
        table[port] = table.get(port, 0) + 1

    # --- virtual time -------------------------------------------------------
    def next_event(self) -> int | None:
        """Earliest self-timed event of any device (virtual instructions), or None."""
        best = None
        for dev in self._timed:
            t = dev.next_event()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def tick(self, now: int) -> None:
        for dev in self._timed:
            dev.tick(now)

    # --- report -------------------------------------------------------------
    def report(self) -> dict:
        """I/O figures with hex port keys in port order (stable JSON)."""
        def hexed(table: dict[int, int]) -> dict[str, int]:
            return {f"{p:#x}": n for p, n in sorted(table.items())}
        return {
            "io_by_port": hexed(self.io_counts),
            "unhandled_port_reads": hexed(self.unhandled_reads),
            "unhandled_port_writes": hexed(self.unhandled_writes),
            "devices": {d.name: d.stats() for d in self.devices if d.stats()},
        }
