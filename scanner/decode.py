"""Instruction decoding for the scanner: capstone's lite interface, as streams.

Costs measured on this machine (capstone 5.0.7): one `cs_disasm` call costs
about 7 us before it decodes anything; the C decoder then does about 2 M
instructions/s; turning one decoded instruction into Python values (what
`disasm_lite` yields) costs about 1 us.  So we (1) decode a chunk per call,
(2) pull instructions out of `disasm_lite`'s generator only as the traversal
needs them, and (3) keep a paused generator keyed by the address it would
yield next: the fall-through of a conditional jump and the return site of a
call continue the same stream instead of paying for a new call.

An instruction is used only when its chunk held at least 15 bytes from its
start (or memory ended there), so it decodes exactly as it would alone at its
address.
"""
from __future__ import annotations

from typing import Callable

import capstone

MAX_INSN = 15
ADDR_MASK = 0xFFFFFFFF


def new_capstone() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    md.detail = False
    return md


class Decoder:
    """`at(addr)` -> (size, mnemonic, op_str, buf, buf_base) or None."""

    def __init__(self, read_mem: Callable[[int, int], "bytes | None"], chunk: int = 64,
                 max_chunk: int = 256, max_streams: int = 4096):
        self.read_mem = read_mem
        self.chunk = chunk
        self.max_chunk = max_chunk
        self.max_streams = max_streams
        self.md = new_capstone()
        # next address -> (generator, buf, base, limit, chunk size)
        self.streams: dict[int, tuple] = {}
        self.decoded = 0        # instructions pulled out of capstone
        self.calls = 0          # cs_disasm calls

    def read(self, addr: int, n: int) -> bytes:
        n = min(n, (ADDR_MASK + 1) - addr)   # never wrap past 4 GiB
        if n <= 0:
            return b""
        data = self.read_mem(addr, n)
        return bytes(data) if data else b""

    def _open(self, addr: int, chunk: int):
        buf = self.read(addr, chunk)
        if not buf:
            return None
        self.calls += 1
        full = len(buf) == chunk                 # a short read means memory ends there
        limit = addr + len(buf) - (MAX_INSN if full else 0)
        return (self.md.disasm_lite(buf, addr), buf, addr, limit, chunk)

    def at(self, addr: int):
        s = self.streams.pop(addr, None)
        if s is None:
            s = self._open(addr, self.chunk)
            if s is None:
                return None
        gen, buf, base, limit, chunk = s
        if addr > limit and addr != base:
            # Too close to the chunk's end to trust: continue with a bigger chunk.
            s = self._open(addr, min(chunk * 2, self.max_chunk))
            if s is None:
                return None
            gen, buf, base, limit, chunk = s
        try:
            a, size, mnem, op = next(gen)
        except (StopIteration, capstone.CsError):
            if addr != base:
                # The chunk ran out (or hit bad bytes): retry from here alone.
                s = self._open(addr, min(chunk * 2, self.max_chunk))
                if s is None:
                    return None
                gen, buf, base, limit, chunk = s
                try:
                    a, size, mnem, op = next(gen)
                except (StopIteration, capstone.CsError):
                    return None
            else:
                return None
        self.decoded += 1
        streams = self.streams
        if len(streams) >= self.max_streams:
            # Bound memory.  (Evicting the oldest key instead is a trap: a dict
            # whose front keys were deleted makes next(iter(d)) walk the holes.)
            streams.clear()
        streams[(a + size) & ADDR_MASK] = (gen, buf, base, limit,
                                           chunk if chunk >= self.max_chunk else chunk * 2)
        return size, mnem, op, buf, base

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
        """Forget paused streams whose bytes may overlap [lo, hi)."""
        self.streams = {a: s for a, s in self.streams.items()
                        if not (s[2] < hi and s[2] + len(s[1]) > lo)}
