"""A basic block's instructions, stored compactly.

A block's instructions are contiguous bytes, so the block keeps just three
things: its start address, its bytes, and one size per instruction.  The
rows users read, (addr, size, mnemonic, op_str, bytes), are decoded with
capstone the first time they are asked for and then kept.

Why: Debian's i386 kernel has 1.5 million instructions in 380,000 blocks.
Keeping five Python objects per instruction (the row tuple, its address,
text and bytes) plus an instruction -> block dict entry cost more than half of
the scan's time (allocation, first-touch page faults of ~400 MB, hash-table
probes; measured with perf, docs/benchmarks.md).  The scanner needs the text
only of branches, which it reads from capstone while it walks; everyone else
(runtime, patcher, notebooks, JSON) reads rows and gets exactly what decoding
each instruction alone at its address gives, as before.

An `Insns` is an immutable sequence of rows: len, indexing, slicing (a slice
is again an `Insns`), iteration and comparison with another `Insns` or with a
tuple or list of rows work as they did for the tuple of rows it replaces.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from scanner.decode import new_capstone

_md = None


def _capstone():
    global _md
    if _md is None:
        _md = new_capstone()
    return _md


class Insns(Sequence):
    __slots__ = ("start", "data", "sizes", "_rows")

    def __init__(self, start: int, data: bytes, sizes: bytes, rows: tuple | None = None):
        self.start = start
        self.data = data          # the block's bytes, instruction after instruction
        self.sizes = sizes        # one byte per instruction: its length
        self._rows = rows         # decoded rows, when known

    @classmethod
    def from_rows(cls, rows) -> "Insns":
        """From (addr, size, mnemonic, op_str, bytes) rows of consecutive instructions."""
        rows = tuple(tuple(r) for r in rows)
        if not rows:
            return cls(0, b"", b"", ())
        a = rows[0][0]
        for r in rows:
            if r[0] != a or r[1] != len(r[4]) or not 0 < r[1] < 256:
                raise ValueError(f"instruction rows must be consecutive: {r[0]:#x} after {a:#x}")
            a += r[1]
        return cls(rows[0][0], b"".join(bytes(r[4]) for r in rows),
                   bytes(r[1] for r in rows), rows)

    # --- without decoding ----------------------------------------------------------
    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def addrs(self) -> list[int]:
        """Address of each instruction."""
        s = self.start
        return [s] + [s + o for o in accumulate(self.sizes[:-1])] if self.sizes else []

    def index_of(self, addr: int) -> int:
        """Position of the instruction that starts at `addr` (ValueError if none)."""
        off = addr - self.start
        if 0 <= off < len(self.data):
            o = 0
            for i, n in enumerate(self.sizes):
                if o == off:
                    return i
                if o > off:
                    break
                o += n
        raise ValueError(f"no instruction starts at {addr:#x} in the block at {self.start:#x}")

    def addr_at(self, i: int) -> int:
        """Address of instruction `i` (negative counts from the end)."""
        i = range(len(self.sizes))[i]
        return self.start + sum(self.sizes[:i])

    def split(self, i: int) -> tuple["Insns", "Insns"]:
        """(instructions before i, instructions from i)."""
        off = sum(self.sizes[:i])
        rows = self._rows
        head = Insns(self.start, self.data[:off], self.sizes[:i], rows[:i] if rows else None)
        tail = Insns(self.start + off, self.data[off:], self.sizes[i:], rows[i:] if rows else None)
        return head, tail

    # --- rows --------------------------------------------------------------------
    def rows(self) -> tuple:
        rows = self._rows
        if rows is None:
            rows = self._rows = self._decode()
        return rows

    def _decode(self) -> tuple:
        md = _capstone()
        out = []
        a, o, data = self.start, 0, self.data
        for n in self.sizes:
            raw = data[o:o + n]
            got = next(md.disasm_lite(raw, a, 1), None)
            if got is None or got[1] != n:       # cannot happen for bytes the scanner decoded
                raise ValueError(f"{a:#x}: {raw.hex()} no longer decodes as {n} bytes")
            out.append((a, n, got[2], got[3], raw))
            a += n
            o += n
        return tuple(out)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self.sizes))
            if step != 1:
                return self.rows()[i]
            if hi <= lo:
                return Insns(self.start, b"", b"", ())
            rest = self.split(lo)[1]
            return rest.split(hi - lo)[0] if hi < len(self.sizes) else rest
        return self.rows()[i]

    def __iter__(self):
        return iter(self.rows())

    def __eq__(self, other):
        if isinstance(other, Insns):
            return (not self.sizes and not other.sizes) or (
                self.start == other.start and self.sizes == other.sizes and self.data == other.data)
        if isinstance(other, (tuple, list)):
            if not all(isinstance(r, (tuple, list)) for r in other):
                return False
            return self.rows() == tuple(tuple(r) for r in other)
        return NotImplemented

    def __hash__(self):
        # Equal to its tuple of rows, so it hashes as that tuple (decoding the
        # rows if need be: hashing a block's instructions is rare).
        return hash(self.rows())

    def __repr__(self) -> str:
        return f"Insns(start={self.start:#x}, {len(self.sizes)} instructions, {len(self.data)} bytes)"

    def __reduce__(self):
        return (Insns, (self.start, self.data, self.sizes))
