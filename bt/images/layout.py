"""Checks every loader applies before handing a GuestImage to the machine,
and the PC memory map the boot protocols describe to the guest."""
from __future__ import annotations

from bt.errors import BadInput
from bt.images.image import Segment
from bt.machine import BOOT_GDT_ADDR, MIB, flat_gdt_bytes

# The PC memory map every protocol reports: conventional memory up to the EBDA,
# the EBDA/VGA/BIOS hole reserved, and RAM from 1 MiB to the end.
LOW_RAM_END = 0x9FC00
HIGH_RAM_START = 1 * MIB
E820_RAM = 1
E820_RESERVED = 2


def e820_map(mem_bytes: int) -> list[tuple[int, int, int]]:
    """(addr, size, type) entries of the Linux e820 map for `mem_bytes` of RAM."""
    return [
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, 0xA0000 - LOW_RAM_END, E820_RESERVED),
        (0xF0000, 0x10000, E820_RESERVED),
        (HIGH_RAM_START, mem_bytes - HIGH_RAM_START, E820_RAM),
    ]


def multiboot_mmap(mem_bytes: int) -> list[tuple[int, int, int]]:
    """(addr, size, type) entries of the multiboot memory map (the hole in one piece)."""
    return [
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, E820_RESERVED),
        (HIGH_RAM_START, mem_bytes - HIGH_RAM_START, E820_RAM),
    ]


def check_mem(mem_bytes: int, fmt: str) -> None:
    """Boot protocols that describe high memory need some of it."""
    if mem_bytes <= HIGH_RAM_START:
        raise BadInput(f"{fmt} guests need more than 1 MiB of RAM (got {mem_bytes // 1024} KiB)")


def check_layout(name: str, image: list[Segment], boot: list[Segment], entry: int, mem_bytes: int,
                 boot_selectors: tuple[int, int] | None = None) -> None:
    """Segments inside RAM, not overlapping each other, the boot structures the
    loader built, or the boot GDT the runtime writes; entry inside the image."""
    labelled = [(s, "segment") for s in image] + [(s, "boot structure") for s in boot]
    if boot_selectors is not None:
        gdt = flat_gdt_bytes(*boot_selectors)
        labelled.append((Segment(BOOT_GDT_ADDR, gdt), "boot GDT"))
    for seg, what in labelled:
        if seg.end > mem_bytes:
            raise BadInput(f"{name}: {what} 0x{seg.addr:x}-0x{seg.end:x} lies outside RAM "
                           f"({mem_bytes // MIB} MiB)")
    ordered = sorted(labelled, key=lambda p: (p[0].addr, p[0].end))
    for (a, wa), (b, wb) in zip(ordered, ordered[1:]):
        if b.addr < a.end:
            raise BadInput(f"{name}: {wa} 0x{a.addr:x}-0x{a.end:x} overlaps "
                           f"{wb} 0x{b.addr:x}-0x{b.end:x}")
    if not any(s.addr <= entry < s.end for s in image):
        raise BadInput(f"{name}: entry point 0x{entry:x} is outside the loaded image")
