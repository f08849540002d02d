"""The device interface: one class per device, attached to the machine in one place
(runtime/devices/__init__.py: `attach_standard_devices`)."""
from __future__ import annotations

from typing import Protocol

from bt.outcome import Outcome


class MachineLink(Protocol):
    """What a device may ask of the machine it is attached to."""

    def now(self) -> int:
        """Current virtual time in retired guest instructions."""

    @property
    def cpu_hz(self) -> int:
        """Virtual instructions per second (the virtual clock rate)."""

    def raise_irq(self, line: int) -> None:
        """Assert an ISA IRQ line (0-15) at the PIC (edge triggered)."""

    def lower_irq(self, line: int) -> None:
        """De-assert an IRQ line (level-style devices such as the UART)."""

    def request_stop(self, outcome: Outcome, status: int | None = None) -> None:
        """End the run after the current instruction (debug exit, reset) with
        `outcome`; `status` is the guest's own, else the outcome's."""

    def serial_out(self, data: bytes) -> None:
        """Guest serial output (stdout and the report)."""


class Device:
    """Base class: a device owns a set of I/O ports and/or physical address
    ranges (memory-mapped registers, or RAM of its own: runtime/mmio.py maps
    both)."""

    name = "device"
    ports: tuple[range, ...] = ()
    # (physical base, size) of each memory-mapped range, page aligned
    mmio: tuple[tuple[int, int], ...] = ()
    # (physical base, size) of each range of plain RAM the device brings
    # (pc-testdev's), page aligned; mapped by runtime/mmio.py as memory
    ram_ranges: tuple[tuple[int, int], ...] = ()
    # Widest access (bytes) the device decodes itself.  The bus splits wider
    # accesses into consecutive byte accesses, as the 8-bit ISA bus does, so
    # 8-bit devices never see a size other than 1.
    io_width = 1

    # runtime/iofast.py: where the device publishes what native I/O hooks may
    # answer without asking it (None: nothing is answered natively)
    fast = None

    def attach(self, link: MachineLink) -> None:
        self.link = link

    def set_fast(self, fast) -> None:
        self.fast = fast
        self.publish()

    def publish(self) -> None:
        """Tell `fast` what may be answered natively in the current state; a
        device that publishes anything calls this after every change."""

    def read(self, port: int, size: int) -> int:
        raise NotImplementedError

    def write(self, port: int, size: int, value: int) -> None:
        raise NotImplementedError

    def mmio_read(self, addr: int, size: int) -> int:
        """A guest load of `size` bytes at physical `addr` inside `mmio`; must
        not change what the run loop acts on (answered inside the engine's
        access, runtime/mmio.py)."""
        raise NotImplementedError

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        """A guest store at physical `addr`; the instruction runs alone in a
        one-instruction slice (runtime/mmio.py), so what it changes (an
        interrupt to inject now) is acted on right after it."""
        raise NotImplementedError

    def next_event(self) -> int | None:
        """Virtual time (instructions) of this device's next self-timed event, if any."""
        return None

    def tick(self, now: int) -> None:
        """Advance the device to virtual time `now` (raise due interrupts)."""

    def stats(self) -> dict:
        """Device-specific figures for the run report (JSON-ready, deterministic)."""
        return {}
