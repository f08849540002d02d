"""A fake MachineLink for device tests: settable clock, recorded effects."""
from __future__ import annotations

from runtime.devices.bus import IOBus
from runtime.devices.pic import PICPair


class FakeLink:
    def __init__(self, cpu_hz: int = 100_000_000, pic: PICPair | None = None):
        self.t = 0
        self._hz = cpu_hz
        self.pic = pic
        self.irq_log: list[tuple[str, int]] = []
        self.stops: list[tuple[str, int]] = []
        self.serial = bytearray()

    def now(self) -> int:
        return self.t

    @property
    def cpu_hz(self) -> int:
        return self._hz

    def raise_irq(self, line: int) -> None:
        self.irq_log.append(("raise", line))
        if self.pic is not None:
            self.pic.raise_irq(line)

    def lower_irq(self, line: int) -> None:
        self.irq_log.append(("lower", line))
        if self.pic is not None:
            self.pic.lower_irq(line)

    def request_stop(self, outcome, status: int | None = None) -> None:
        stop = outcome.stop(status=status)      # what the VM records (an Outcome, checked)
        self.stops.append((stop.outcome, stop.status))

    def serial_out(self, data: bytes) -> None:
        self.serial += data

    def raised(self, line: int) -> int:
        return self.irq_log.count(("raise", line))


def bus_with(*devices, link=None):
    link = link or FakeLink()
    bus = IOBus()
    for d in devices:
        bus.attach(d, link)
    return bus, link
