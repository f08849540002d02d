"""The ranges of bt's native memory hooks over scattered pages (runtime/csam.py).

The code-write hook and the read hooks that hide patch bytes must cover every
page they watch.  One range from the lowest to the highest such page is cheap
to check but wide: on Debian's kernel it spans .rodata and .data (4.4 MiB
between .text and .init.text), and Unicorn restores the precise CPU state
(`cpu_restore_state`: a TB lookup by host PC in a tree and a decode of the
TB's search data) before *every* hook call whose range an access hits, even
when the callback only looks a byte up -- 12.6% of bt's CPU profile on Linux
(docs/benchmarks.md, "Linux under bt").  Many ranges are no better: Unicorn
checks every slow-path access against every hook of the type (about 20-30 ns
a hook, "Stores as code grows").  So: at most `MAX_SPANS` ranges, split at
the largest gaps without a watched page, down to a gap of one page
(`MIN_GAP`): the demos keep their data pages next to their code, and a span
over them made every data access of the timer demo pay the restore (bt 0.65
-> 0.41 CPU s, docs/benchmarks.md "Hook spans down to one page"); on Linux the
largest gaps are the same as with the former 1 MiB floor.
"""
from __future__ import annotations

from typing import Iterable

from bt.x86 import PAGE

MAX_SPANS = 4
MIN_GAP = PAGE


def spans(pages: Iterable[int], limit: int | None = None, min_gap: int | None = None) -> list[tuple[int, int]]:
    """[first, last] page address of each range covering `pages` (page
    addresses), in address order: at most `limit` (MAX_SPANS), cut at the
    largest gaps (from one page's end to the next page) of at least `min_gap`
    bytes (MIN_GAP)."""
    limit = MAX_SPANS if limit is None else limit
    min_gap = MIN_GAP if min_gap is None else min_gap
    ps = sorted(set(pages))
    if not ps:
        return []
    gaps = [(b - a - PAGE, i) for i, (a, b) in enumerate(zip(ps, ps[1:])) if b - a - PAGE >= min_gap]
    cuts = sorted(i for _, i in sorted(gaps, reverse=True)[:max(limit - 1, 0)])
    out, start = [], 0
    for i in cuts:
        out.append((ps[start], ps[i]))
        start = i + 1
    out.append((ps[start], ps[-1]))
    return out


def covers(ranges: list[tuple[int, int]], page: int) -> bool:
    return any(lo <= page <= hi for lo, hi in ranges)
