"""Names for kernel addresses, from the kernel's export table.

Debian's vmlinux is stripped (no .symtab; System.map is a stub), but it keeps
its section headers and the export tables the module loader needs:
`__ksymtab` and `__ksymtab_gpl` hold one `struct kernel_symbol` per exported
symbol, `__ksymtab_strings` the names.  An entry is either PC-relative
(CONFIG_HAVE_ARCH_PREL32_RELOCATIONS: three s32 offsets from the field's own
address -- value, name, namespace -- 12 bytes; Debian's 6.1 i386 kernel,
tests/bt/images/test_ksyms.py reads it so) or absolute (value and name
pointers, 8 bytes, or 12 with a namespace).  The file does not record which,
so every layout is tried and the one whose values land in the kernel's text
for the most entries wins (bt/images/kernel_view.py reads the values the same
way, through `decode_exports`).

`KernelSymbols.lookup(addr)` names an address by the exported function at or
below it.  Only exported functions have names here: an address in a function
that is not exported is given the nearest export below it, with its offset
(`name+0x1a2`), so a name stands for "this export and the unexported code
after it up to the next export".  `max_offset` turns far ones into None
(unknown) instead.  Addresses outside the text sections are None.
"""
from __future__ import annotations

import bisect
import io
import struct
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile

from bt.errors import BadInput

EXPORT_TABLES = ("__ksymtab", "__ksymtab_gpl")
STRINGS = "__ksymtab_strings"
TEXT_SECTIONS = (".text", ".init.text")


def _prel(base: int, raw: bytes, k: int) -> tuple[int, int]:
    value, name = struct.unpack_from("<ii", raw, k)
    return (base + k + value) & 0xFFFFFFFF, (base + k + 4 + name) & 0xFFFFFFFF


def _abs(base: int, raw: bytes, k: int) -> tuple[int, int]:
    return struct.unpack_from("<II", raw, k)


# (name, entry size, reader: (table address, table bytes, offset) -> (value, name address))
LAYOUTS = (("pc-relative, 12 bytes", 12, _prel), ("absolute, 12 bytes", 12, _abs),
           ("absolute, 8 bytes", 8, _abs))


def decode_exports(tables, text) -> tuple[str, list[tuple[int, int]]]:
    """(layout, [(value, name address), ...] of the entries whose value is in `text`).
    tables: (address, bytes) of each export table; text: [lo, hi) ranges."""
    def in_text(a: int) -> bool:
        return any(lo <= a < hi for lo, hi in text)

    best: tuple[str, list] = ("none", [])
    if not tables or not text:
        return best
    for layout, size, read in LAYOUTS:
        if any(len(raw) % size for _, raw in tables):
            continue
        found = [e for base, raw in tables for e in (read(base, raw, k) for k in range(0, len(raw), size))
                 if in_text(e[0])]
        if len({v for v, _ in found}) > len({v for v, _ in best[1]}):
            best = (layout, found)
    return best


@dataclass
class KernelSymbols:
    """Exported functions of a kernel, by address (sorted)."""

    addrs: list[int]
    names: list[str]
    layout: str = "none"
    text: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.addrs)

    def lookup(self, addr: int, max_offset: int | None = None) -> tuple[str, int] | None:
        """(name, offset) of the export at or below `addr` in the same text section,
        or None (outside text, before the first export, or farther than max_offset)."""
        sec = next(((lo, hi) for lo, hi in self.text if lo <= addr < hi), None)
        if sec is None:
            return None
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0 or self.addrs[i] < sec[0]:
            return None
        off = addr - self.addrs[i]
        if max_offset is not None and off > max_offset:
            return None
        return self.names[i], off

    def label(self, addr: int, max_offset: int | None = None) -> str:
        """'name+0x12', 'name', or '?' when unknown."""
        hit = self.lookup(addr, max_offset)
        if hit is None:
            return "?"
        return hit[0] if hit[1] == 0 else f"{hit[0]}+{hit[1]:#x}"

    def group(self, addrs, max_offset: int | None = None) -> dict[str, list[int]]:
        """Addresses grouped by the export they fall under ('?' for unknown), sorted."""
        out: dict[str, list[int]] = {}
        for a in sorted(addrs):
            hit = self.lookup(a, max_offset)
            out.setdefault(hit[0] if hit else "?", []).append(a)
        return out


def vmlinux_bytes(path: str, data: bytes) -> bytes:
    """The vmlinux ELF inside a bzImage (unpacked on the host), or `data` if it is one."""
    from bt.images.elf import is_elf
    from bt.images.linux import _unpack_bzimage, is_bzimage
    if is_bzimage(data):
        return _unpack_bzimage(path, data)[1]
    if is_elf(data):
        return data
    raise BadInput(f"{path} is neither a Linux bzImage nor a vmlinux ELF")


def kernel_symbols(path: str, data: bytes) -> KernelSymbols:
    """The exported functions of the kernel in `data` (bzImage or vmlinux); BadInput if
    it is not one.  A kernel without export tables gives an empty table."""
    elf_bytes = vmlinux_bytes(path, data)
    try:
        elf = ELFFile(io.BytesIO(elf_bytes))
        text = [(s["sh_addr"], s["sh_addr"] + s["sh_size"]) for n in TEXT_SECTIONS
                if (s := elf.get_section_by_name(n)) is not None and s["sh_size"]]
        tables = [(s["sh_addr"], s.data()) for n in EXPORT_TABLES
                  if (s := elf.get_section_by_name(n)) is not None and s["sh_type"] != "SHT_NOBITS"
                  and s["sh_size"]]
        strings = elf.get_section_by_name(STRINGS)
        str_base, str_data = (strings["sh_addr"], strings.data()) if strings is not None else (0, b"")
    except (ELFError, ELFParseError, ValueError, IndexError, KeyError, AssertionError, struct.error) as e:
        raise BadInput(f"{path} is a corrupt or truncated kernel ELF ({e})") from None
    layout, entries = decode_exports(tables, text)
    by_addr: dict[int, str] = {}
    for value, name_at in entries:
        k = name_at - str_base
        if not 0 <= k < len(str_data):
            continue                      # a name outside the strings: not a real entry
        end = str_data.find(b"\0", k)
        name = str_data[k:end if end >= 0 else len(str_data)].decode("latin-1")
        if name and (value not in by_addr or name < by_addr[value]):
            by_addr[value] = name         # aliases: one name per address, chosen stably
    addrs = sorted(by_addr)
    return KernelSymbols(addrs, [by_addr[a] for a in addrs], layout, text)
