"""A Linux kernel as its own code sees it: at its link (virtual) addresses.

`bt-run` loads a kernel where the boot protocol puts it (physical addresses,
entry at startup_32), which is what a VM needs.  To study the kernel's code
offline (`bt-scan --kernel-exports`, benchmarks/scan_rate.py) the scanner wants
it where its pointers point: every PT_LOAD segment at its p_vaddr, the entry at
its virtual address, and as entry points every function the kernel exports.

Debian ships vmlinux stripped (no .symtab, System.map is a stub), but the
export tables survive: `__ksymtab` and `__ksymtab_gpl`.  Their entries are
either PC-relative (CONFIG_HAVE_ARCH_PREL32_RELOCATIONS: three s32 offsets,
value/name/namespace, 12 bytes; Debian's 6.1 i386 kernel) or absolute
(value and name pointers, 8 or 12 bytes with a namespace).  The layout is not
recorded in the file, so both readings are tried and the one whose values land
in the kernel's text for more entries wins.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile

from bt.errors import BadInput
from bt.images.elf import is_elf
from bt.images.ksyms import EXPORT_TABLES, TEXT_SECTIONS, decode_exports
from bt.images.linux import _unpack_bzimage, is_bzimage



@dataclass
class KernelView:
    segments: list[tuple[int, bytes, int]]   # (virtual address, file bytes, memsize)
    entry: int                                # e_entry, at its virtual address
    exports: list[int] = field(default_factory=list)    # exported functions, sorted, in text
    export_layout: str = "none"               # how the tables were read
    text: list[tuple[int, int]] = field(default_factory=list)


def kernel_view(path: str, data: bytes) -> KernelView:
    """The kernel in a bzImage or vmlinux file at its virtual addresses (BadInput if not one)."""
    if is_bzimage(data):
        _header, elf_bytes, _info = _unpack_bzimage(path, data)
        name = f"{path} (decompressed vmlinux)"
    elif is_elf(data):
        elf_bytes, name = data, path
    else:
        raise BadInput(f"{path} is neither a Linux bzImage nor a vmlinux ELF "
                       "(--kernel-exports reads a kernel's export tables)")
    try:
        elf = ELFFile(io.BytesIO(elf_bytes))
        segs, delta = [], None
        for s in elf.iter_segments():
            if s["p_type"] != "PT_LOAD":
                continue
            segs.append((s["p_vaddr"], s.data(), s["p_memsz"]))
            if delta is None:
                delta = s["p_vaddr"] - s["p_paddr"]
        if not segs:
            raise BadInput(f"{name} has no loadable segments")
        entry = elf["e_entry"]
        if not any(v <= entry < v + max(len(d), m) for v, d, m in segs):
            entry = (entry + (delta or 0)) & 0xFFFFFFFF    # startup_32 is linked physical
        text = []
        for sec_name in TEXT_SECTIONS:
            sec = elf.get_section_by_name(sec_name)
            if sec is not None and sec["sh_size"]:
                text.append((sec["sh_addr"], sec["sh_addr"] + sec["sh_size"]))
        tables = []
        for sec_name in EXPORT_TABLES:
            sec = elf.get_section_by_name(sec_name)
            if sec is not None and sec["sh_type"] != "SHT_NOBITS" and sec["sh_size"]:
                tables.append((sec["sh_addr"], sec.data()))
    except BadInput:
        raise
    except (ELFError, ELFParseError, ValueError, IndexError, KeyError, AssertionError, struct.error) as e:
        raise BadInput(f"{name} is a corrupt or truncated ELF file ({e})") from None
    layout, exports = _read_exports(tables, text)
    return KernelView(segs, entry, exports, layout, text)


def _read_exports(tables, text) -> tuple[str, list[int]]:
    """(layout, sorted exported addresses in text): the layouts are read once,
    in bt/images/ksyms.py (which also reads the names)."""
    layout, entries = decode_exports(tables, text)
    return layout, sorted({value for value, _ in entries})
