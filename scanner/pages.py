"""Per-page records of scanned code, as CSAM kept them.

For every 4 KiB page that holds scanned code we keep one byte per offset
(0 = not scanned, 1 = first byte of a scanned instruction, 2 = a later byte of
one) and a CRC-32 of the page's bytes taken after the scan.  The runtime
write-protects these pages; when a write hits one (or the hash no longer
matches) the page is marked dirty and the scanner drops and rescans its code.
"""
from __future__ import annotations

import zlib
from typing import Callable, Iterable

from bt.x86 import PAGE, PAGE_MASK

UNSCANNED, START, CONT = 0, 1, 2
_ZERO_PAGE = bytes(PAGE)

ReadMem = Callable[[int, int], "bytes | None"]


class PageRecord:
    __slots__ = ("base", "flags", "hash", "dirty")

    def __init__(self, base: int):
        self.base = base
        self.flags = bytearray(PAGE)
        self.hash: int | None = None
        self.dirty = False

    def scanned_offsets(self) -> list[int]:
        """Offsets of the first bytes of scanned instructions."""
        f = self.flags
        out = []
        i = f.find(START)
        while i >= 0:
            out.append(i)
            i = f.find(START, i + 1)
        return out

    def scanned_bytes(self) -> int:
        return PAGE - self.flags.count(UNSCANNED)


def page_hash(read_mem: ReadMem, base: int) -> int:
    data = read_mem(base, PAGE) or b""
    return zlib.crc32(bytes(data))


class PageMap:
    """Page base address -> PageRecord for every page holding scanned code."""

    def __init__(self):
        self.pages: dict[int, PageRecord] = {}
        # `code_pages` without a look at every record per call: the pages that
        # held code at the last call, and the pages to look at again -- every
        # record created or cleared since, and every record that was empty then
        # (the scanner's walks, C and Python, write flags straight into a
        # record's bytearray; only `unmark`, `clear` and `drop` take them away).
        self._code: set[int] = set()
        self._recheck: set[int] = set()

    def record(self, base: int) -> PageRecord:
        rec = self.pages.get(base)
        if rec is None:
            rec = self.pages[base] = PageRecord(base)
            self._recheck.add(base)
        return rec

    def state(self, addr: int) -> int:
        rec = self.pages.get(addr & PAGE_MASK)
        return rec.flags[addr & (PAGE - 1)] if rec else UNSCANNED

    def is_free(self, addr: int, size: int) -> bool:
        """True when none of the bytes [addr, addr+size) belong to a scanned instruction."""
        return all(self.state((addr + i) & 0xFFFFFFFF) == UNSCANNED for i in range(size))

    def mark(self, addr: int, size: int) -> None:
        for i in range(size):
            a = (addr + i) & 0xFFFFFFFF
            self.record(a & PAGE_MASK).flags[a & (PAGE - 1)] = START if i == 0 else CONT

    def unmark(self, addr: int, size: int) -> None:
        """Clear [addr, addr+size): one slice per page, so a whole block (its
        bytes are contiguous) costs a call, not one per byte (Debian's kernel
        under bt: 572 k per-instruction calls took 3.5 s of 20 M instructions)."""
        end = addr + size
        while addr < end:
            a = addr & 0xFFFFFFFF
            base = a & PAGE_MASK
            n = min(end - addr, base + PAGE - a)
            rec = self.pages.get(base)
            if rec:
                off = a - base
                rec.flags[off:off + n] = bytes(n)
                self._recheck.add(base)
            addr += n

    def clear(self, base: int) -> None:
        """Every byte of page `base` unscanned (its record stays)."""
        rec = self.pages.get(base)
        if rec is not None:
            rec.flags[:] = _ZERO_PAGE
            self._code.discard(base)     # refilled before the next refresh: a new code page
            self._recheck.add(base)

    def code_pages(self) -> list[int]:
        """Pages holding scanned code, in order: `code_pages_reference`'s answer
        from the records that may have changed since the last call.  A look at
        every record (a 4 KiB memcmp each) was 1.6-1.8 s of the first 150 M
        instructions of Debian's kernel under bt (docs/benchmarks.md, "Linux
        under bt: where the time goes")."""
        self.refresh()
        return sorted(self._code)

    def refresh(self) -> set[int]:
        """Bring the code-page set up to date from the records that may have
        changed; returns the pages that became code pages since the last
        refresh, a page cleared or dropped and filled again included (bt's lazy
        scan asks before and after each walk: the pages the walk added, without
        a sort or a copy of the whole set)."""
        pages, code, keep, added = self.pages, self._code, [], set()
        for b in self._recheck:
            rec = pages.get(b)
            if rec is None:
                code.discard(b)
            elif rec.flags != _ZERO_PAGE:
                if b not in code:
                    code.add(b)
                    added.add(b)
            else:
                code.discard(b)
                keep.append(b)       # empty now: a walk may fill it without a word
        self._recheck = set(keep)
        return added

    def known_code(self) -> set[int]:
        """The code pages as of the last `refresh` or `code_pages` (the live set:
        read it, do not change it)."""
        return self._code

    def code_pages_reference(self) -> list[int]:
        """The definition: every record with a scanned byte (the tests' reference)."""
        return sorted(b for b, r in self.pages.items() if r.flags != _ZERO_PAGE)

    def update_hashes(self, read_mem: ReadMem, bases: Iterable[int] | None = None) -> None:
        for b in (self.pages if bases is None else bases):
            rec = self.pages.get(b)
            if rec is not None:
                rec.hash = page_hash(read_mem, b)
                rec.dirty = False

    def changed_pages(self, read_mem: ReadMem) -> list[int]:
        """Pages whose bytes no longer match the hash taken at scan time; marks them dirty."""
        out = []
        for b in sorted(self.pages):
            rec = self.pages[b]
            if rec.hash is not None and page_hash(read_mem, b) != rec.hash:
                rec.dirty = True
                out.append(b)
        return out

    def mark_dirty(self, addr: int) -> int | None:
        """A write hit `addr`: mark its page dirty when it holds scanned code."""
        rec = self.pages.get(addr & PAGE_MASK)
        if rec is None:
            return None
        rec.dirty = True
        return rec.base

    def dirty_pages(self) -> list[int]:
        return sorted(b for b, r in self.pages.items() if r.dirty)

    def drop(self, base: int) -> None:
        self.pages.pop(base, None)
        self._code.discard(base)
        self._recheck.add(base)

    def merge_records(self, other: "PageMap") -> None:
        """Take `other`'s pages' hashes and dirty bits (not their flags: the
        CFG marks the instructions it takes, CFG.merge)."""
        for b, r in other.pages.items():
            mine = self.pages.get(b)
            if mine is None:
                mine = self.record(b)
                mine.hash = r.hash
            mine.dirty = mine.dirty or r.dirty

    def to_dict(self) -> dict:
        return {f"{b:#x}": {"hash": r.hash, "dirty": r.dirty, "flags": zlib.compress(bytes(r.flags)).hex()}
                for b, r in sorted(self.pages.items())}

    @classmethod
    def from_dict(cls, d: dict) -> "PageMap":
        pm = cls()
        for k, v in d.items():
            rec = pm.record(int(k, 16))
            flags = zlib.decompress(bytes.fromhex(v["flags"]))
            if len(flags) != PAGE:
                raise ValueError(f"page {k}: flags are {len(flags)} bytes, not {PAGE}")
            rec.flags[:] = flags
            rec.hash, rec.dirty = v.get("hash"), bool(v.get("dirty"))
        return pm
