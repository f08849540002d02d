"""A `read_mem` over loaded segments, for scanning an image without a running VM.

Only bytes that an image places in memory are readable (a segment's memsize
beyond its data reads as zeros, like .bss); everything else is unmapped, so a
scan that wanders off the image ends in a bad block instead of decoding zeros
across all of RAM.
"""
from __future__ import annotations

import bisect
from typing import Iterable


class SegmentMemory:
    def __init__(self, segments: Iterable[tuple[int, bytes, int]], limit: int | None = None):
        """`segments`: (address, data, memsize).  `limit`: bytes above it are unmapped."""
        spans: list[tuple[int, bytearray]] = []
        for addr, data, memsize in sorted(segments, key=lambda s: s[0]):
            size = max(memsize, len(data))
            if limit is not None:
                size = min(size, max(0, limit - addr))
            if size <= 0:
                continue
            buf = bytearray(data[:size]) + bytes(size - min(size, len(data)))
            if spans and spans[-1][0] + len(spans[-1][1]) >= addr:
                # Overlapping or adjacent: later segments win where they overlap.
                base, prev = spans[-1]
                end = max(base + len(prev), addr + size)
                if len(prev) < end - base:
                    prev.extend(bytes(end - base - len(prev)))
                prev[addr - base:addr - base + size] = buf
            else:
                spans.append((addr, buf))
        self._starts = [s[0] for s in spans]
        self._bufs = [bytes(s[1]) for s in spans]

    @classmethod
    def from_image(cls, image, limit: int | None = None) -> "SegmentMemory":
        return cls(((s.addr, s.data, s.memsize) for s in image.segments), limit)

    def read(self, addr: int, n: int) -> bytes | None:
        """Up to `n` bytes at `addr` (fewer where the mapping ends), None if unmapped."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        off = addr - self._starts[i]
        buf = self._bufs[i]
        if off >= len(buf):
            return None
        return buf[off:off + n]

    __call__ = read

    def ranges(self) -> list[tuple[int, int]]:
        return [(s, s + len(b)) for s, b in zip(self._starts, self._bufs)]
