"""The loaded form of a guest image, independent of the file format it came from."""
from __future__ import annotations

from dataclasses import dataclass, field

from bt.machine import BOOT_CS, BOOT_DS


@dataclass
class Segment:
    """Bytes to place at a guest-physical address; `memsize` > len(data) is zero-filled."""

    addr: int
    data: bytes
    memsize: int = 0

    def __post_init__(self):
        self.memsize = max(self.memsize, len(self.data))

    @property
    def end(self) -> int:
        return self.addr + self.memsize


@dataclass
class GuestImage:
    """Everything the machine needs to boot a guest.

    `segments` include boot structures the loader built (multiboot information,
    Linux boot_params, command line, initrd), so the runtime only copies bytes.
    `regs` are initial general registers by lower-case name (eax, ebx, esi, ...).
    """

    path: str
    format: str                      # raw | elf | multiboot | linux | demo
    entry: int
    segments: list[Segment] = field(default_factory=list)
    regs: dict[str, int] = field(default_factory=dict)
    boot_cs: int = BOOT_CS
    boot_ds: int = BOOT_DS
    name: str = ""
    symbols: dict[str, int] = field(default_factory=dict)  # name -> address, when known
    info: dict = field(default_factory=dict)               # format-specific facts for reports
