"""Instruction decoding for the scanner: capstone's lite interface, in chunks.

capstone's Python `disasm_lite` decodes its whole buffer (or `count`
instructions) per call, and one call costs about 10 us, so decoding one
instruction per call would cap the scanner near 100,000 instructions/s.  We
decode a chunk linearly from the first address asked for and remember every
instruction found at its address: x86 linear decoding re-synchronises quickly,
so most later blocks start at an address already decoded.  An instruction is
cached only when the chunk held at least 15 bytes from its start (or memory
ended there), so it decodes exactly as it would alone at that address.
"""
from __future__ import annotations

from typing import Callable

import capstone

MAX_INSN = 15
ADDR_MASK = 0xFFFFFFFF

# (size, mnemonic, op_str, buffer, buffer base address)
Decoded = tuple


def new_capstone() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    md.detail = False
    return md


class Decoder:
    def __init__(self, read_mem: Callable[[int, int], "bytes | None"], chunk: int = 384,
                 cache_limit: int = 400_000):
        self.read_mem = read_mem
        self.chunk = chunk
        self.cache_limit = cache_limit
        self.md = new_capstone()
        self.cache: dict[int, Decoded] = {}
        self.decoded = 0      # instructions decoded by capstone (including unused ones)

    def read(self, addr: int, n: int) -> bytes:
        n = min(n, (ADDR_MASK + 1) - addr)   # never wrap past 4 GiB
        if n <= 0:
            return b""
        data = self.read_mem(addr, n)
        return bytes(data) if data else b""

    def at(self, addr: int) -> Decoded | None:
        """The instruction at `addr`, or None when it cannot be decoded there."""
        rec = self.cache.get(addr)
        if rec is not None:
            return rec
        buf = self.read(addr, self.chunk)
        if not buf:
            return None
        full = len(buf) == self.chunk           # a short read means memory ends there
        limit = addr + len(buf) - (MAX_INSN if full else 0)
        cache = self.cache
        if len(cache) > self.cache_limit:
            cache.clear()                        # bound memory; this is only a cache
        n = 0
        for a, size, mnem, op in self.md.disasm_lite(buf, addr):
            n += 1
            if a > limit and a != addr:
                break
            cache[a] = (size, mnem, op, buf, addr)
        self.decoded += n
        return cache.get(addr)

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
        if len(buf) < MAX_INSN:
            return "truncated: runs off readable memory"
        return "undecodable"

    def invalidate(self, lo: int, hi: int) -> None:
        """Forget decoded instructions whose bytes may overlap [lo, hi)."""
        lo -= MAX_INSN
        self.cache = {a: r for a, r in self.cache.items()
                      if not (lo < a < hi) and not (r[4] < hi and r[4] + len(r[3]) > lo)}
