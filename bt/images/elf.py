"""ELF32 i386 executables: PT_LOAD segments at their physical addresses.

The loader works on bytes (not a path) because the Linux loader feeds it the
vmlinux it decompressed out of a bzImage.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bt.errors import BadInput
from bt.images.image import Segment

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

ELF_MAGIC = b"\x7fELF"
ELF32_HEADER_SIZE = 52

# Names for the architectures people most often hand us by mistake.
_MACHINE_NAMES = {
    "EM_X86_64": "x86-64", "EM_ARM": "ARM", "EM_AARCH64": "AArch64", "EM_RISCV": "RISC-V",
    "EM_MIPS": "MIPS", "EM_PPC": "PowerPC", "EM_PPC64": "PowerPC64", "EM_SPARC": "SPARC",
}


@dataclass
class ElfFacts:
    """What the loaders need from an ELF executable."""

    segments: list[Segment]
    entry: int                      # physical
    virtual_entry: int              # e_entry as written in the header
    symbols: dict[str, int] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes, name: str) -> ElfFacts:
    """Segments, physical entry, symbols and section names of an ELF32 i386 file."""
    # pyelftools is imported here, not at the top: it costs ~20 ms of every
    # start-up and only ELF guests need it (docs/benchmarks.md "Start-up time").
    from elftools.common.exceptions import ELFError, ELFParseError
    from elftools.elf.elffile import ELFFile

    _check_ident(data, name)
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf["e_machine"]
        if machine != "EM_386":
            raise BadInput(f"{name} is an ELF for {_MACHINE_NAMES.get(machine, machine)}, not i386")
        if elf["e_type"] not in ("ET_EXEC", "ET_DYN"):
            raise BadInput(f"{name} is an ELF of type {elf['e_type']}, not an executable")
        loads = _load_headers(elf, data, name)
        symbols = _symbols(elf)
        sections = [s.name for s in elf.iter_sections()] if elf["e_shoff"] else []
        virtual_entry = elf["e_entry"]
    except BadInput:
        raise
    except (ELFError, ELFParseError, ValueError, IndexError, KeyError, AssertionError) as e:
        raise BadInput(f"{name} is a corrupt or truncated ELF file ({e})") from None
    entry = physical_entry(virtual_entry, loads)
    if entry is None:
        raise BadInput(f"{name}: entry point 0x{virtual_entry:x} is outside the loaded image")
    segments = [Segment(paddr, data[off:off + filesz], memsz) for _, paddr, off, filesz, memsz in loads]
    return ElfFacts(segments, entry, virtual_entry, symbols, sections)


def _check_ident(data: bytes, name: str) -> None:
    if not is_elf(data):
        raise BadInput(f"{name} is not an ELF file")
    if len(data) < ELF32_HEADER_SIZE:
        raise BadInput(f"{name} is a truncated ELF file ({len(data)} bytes; the header alone is 52)")
    if data[4] == 2:
        raise BadInput(f"{name} is a 64-bit ELF; bt runs 32-bit x86 (i386) guests")
    if data[4] != 1 or data[5] != 1:
        raise BadInput(f"{name} is not a little-endian ELF32 file (class {data[4]}, data {data[5]})")


def _load_headers(elf: ELFFile, data: bytes, name: str) -> list[tuple[int, int, int, int, int]]:
    """(vaddr, paddr, offset, filesz, memsz) of each non-empty PT_LOAD, checked against the file."""
    loads = []
    for i, seg in enumerate(elf.iter_segments()):
        if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
            continue
        off, filesz, memsz = seg["p_offset"], seg["p_filesz"], seg["p_memsz"]
        if filesz > memsz:
            raise BadInput(f"{name}: segment {i} has more file bytes (0x{filesz:x}) than memory (0x{memsz:x})")
        if off + filesz > len(data):
            raise BadInput(f"{name} is truncated: segment {i} needs bytes up to 0x{off + filesz:x}, "
                           f"the file has 0x{len(data):x}")
        loads.append((seg["p_vaddr"], seg["p_paddr"], off, filesz, memsz))
    if not loads:
        raise BadInput(f"{name} has no loadable (PT_LOAD) segments")
    return loads


def physical_entry(entry: int, loads) -> int | None:
    """e_entry as a physical address.

    Like GRUB: an entry inside a segment's virtual range is moved to the same
    offset in its physical range (Linux and higher-half kernels link virtual,
    load physical); otherwise it must already lie in a physical range.
    """
    for vaddr, paddr, _, _, memsz in loads:
        if vaddr <= entry < vaddr + memsz:
            return paddr + (entry - vaddr)
    for _, paddr, _, _, memsz in loads:
        if paddr <= entry < paddr + memsz:
            return entry
    return None


def _symbols(elf: ELFFile) -> dict[str, int]:
    """Defined function/object/notype symbols, name -> (virtual) address."""
    table = elf.get_section_by_name(".symtab")
    if table is None or not hasattr(table, "iter_symbols"):
        return {}
    out = {}
    for sym in table.iter_symbols():
        if (sym.name and sym["st_shndx"] != "SHN_UNDEF"
                and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE")):
            out.setdefault(sym.name, sym["st_value"])
    return out
