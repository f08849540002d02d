"""Instruction decoding for the scanner: capstone's lite interface, chunk by chunk.

Costs measured on this machine (capstone 5.0.7, Python 3.11): one
`cs_disasm` call costs 7-30 us before it decodes anything, and capstone
decodes every instruction of the buffer it is given up front.  Decoding a few
dozen bytes per basic block therefore spent most of the scan in call overhead
and in instructions decoded and thrown away.  So the decoder sweeps a whole
chunk (a few KiB) linearly with one call and keeps every instruction it got,
by address, in `cache`: the recursive walk then finds nearly every instruction
it reaches already decoded (compiled code is laid out linearly; only jumps
into the middle of an instruction, data and undecodable bytes miss and start
a new sweep there).  Decoding at an address is deterministic, so a cached
entry is exactly what decoding alone at that address gives, provided the
sweep had the instruction's 15 bytes: instructions that start within 15
bytes of a full chunk's end are not kept (or memory ended there).

Cache entries are the scanner's instruction tuples themselves,
(addr, size, mnemonic, op_str, bytes), so a block's instruction list shares
them instead of building new ones.
"""
from __future__ import annotations

import bisect
from typing import Callable

import capstone

from bt.x86 import PAGE

MAX_INSN = 15
ADDR_MASK = 0xFFFFFFFF


def new_capstone() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    md.detail = False
    return md


class Decoder:
    """`at(addr)` -> (addr, size, mnemonic, op_str, bytes) or None."""

    def __init__(self, read_mem: Callable[[int, int], "bytes | None"], chunk: int = 2048,
                 max_cached: int = 4_000_000):
        if chunk < 2 * MAX_INSN:
            raise ValueError(f"decode chunk of {chunk} bytes: at least {2 * MAX_INSN} needed")
        self.read_mem = read_mem
        self.chunk = chunk
        self.max_cached = max_cached
        self.md = new_capstone()
        self.cache: dict[int, tuple] = {}
        self.starts: list[int] = []     # sorted addresses where sweeps began
        self.decoded = 0        # instructions decoded by capstone (and kept)
        self.calls = 0          # cs_disasm calls

    def read(self, addr: int, n: int) -> bytes:
        n = min(n, (ADDR_MASK + 1) - addr)   # never wrap past 4 GiB
        if n <= 0:
            return b""
        data = self.read_mem(addr, n)
        return bytes(data) if data else b""

    def fill(self, addr: int) -> tuple | None:
        """Sweep a chunk from `addr` into the cache; the instruction at `addr` or None."""
        cache = self.cache
        starts = self.starts
        if len(cache) >= self.max_cached:
            cache.clear()       # bound memory; entries are only a shortcut
            starts.clear()
        # Stop where an earlier sweep began: its instructions are cached already
        # (when this sweep falls into step with it, as x86 code quickly does).
        i = bisect.bisect_right(starts, addr)
        want = self.chunk
        if i < len(starts) and starts[i] - addr + MAX_INSN < want:
            want = starts[i] - addr + MAX_INSN
        buf = self.read(addr, want)
        if not buf:
            return None
        starts.insert(i, addr)
        self.calls += 1
        # A short read means memory ends there: every instruction is complete.
        limit = addr + len(buf) - (MAX_INSN if len(buf) == want else 0)
        try:
            got = list(self.md.disasm_lite(buf, addr))
        except capstone.CsError:
            got = []
        if got and got[-1][0] > limit:
            k = len(got)
            while k > 1 and got[k - 1][0] > limit:
                k -= 1
            del got[k:]
        cache.update({a: (a, size, mnem, op, buf[a - addr:a - addr + size])
                      for a, size, mnem, op in got})
        n = len(got)
        self.decoded += n
        return cache.get(addr)

    def at(self, addr: int) -> tuple | None:
        rec = self.cache.get(addr)
        return rec if rec is not None else self.fill(addr)

    def alone(self, addr: int) -> tuple[int, str, str] | None:
        """Decode one instruction with only its own (at most 15) bytes."""
        buf = self.read(addr, MAX_INSN)
        for _a, size, mnem, op in self.md.disasm_lite(buf, addr, 1):
            return size, mnem, op
        return None

    def why_not(self, addr: int) -> str:
        """Why `at(addr)` found nothing: unmapped, truncated or undecodable."""
        buf = self.read(addr, MAX_INSN)
        if not buf:
            return "unmapped"
        if len(buf) < MAX_INSN and self.alone(addr) is None:
            return "truncated: runs off readable memory"
        return "undecodable"

    def invalidate(self, lo: int, hi: int) -> None:
        """Forget decoded instructions whose bytes may overlap [lo, hi)."""
        # Cheap for code that keeps rewriting one page (patch churn): `starts` is
        # sorted (a slice goes), and a small cache is walked instead of the range.
        starts = self.starts
        del starts[bisect.bisect_right(starts, lo - MAX_INSN):bisect.bisect_left(starts, hi)]
        cache = self.cache
        if len(cache) < (hi - lo):
            for a in [a for a in cache if lo - MAX_INSN < a < hi]:
                del cache[a]
            return
        pop = cache.pop
        for a in range(max(0, lo - MAX_INSN + 1), hi):
            pop(a, None)
