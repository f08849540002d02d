"""CSAM's answer to a guest store into scanned code: drop only what it changed.

`CSAM.drain_writes` (runtime/csam.py) hands each written page here with the
stores the native write hook logged on it.  Only the blocks the stores hit go,
with what depends on them (scanner/drop.py: blocks that run on into them
without a branch), every patch whose bytes or covered instructions overlap
them (its other covered blocks go too, so their sites are planned again when
they are rescanned), and the guards in them; the rest of the page stays
scanned, patched and published to the block check.  Until ftrace and the
alternatives are done with a page of Linux's text, that spared a rescan of the
page per 5-byte store (docs/benchmarks.md, "CSAM: dropping only what a store
changed").

When the write log overflowed only the page is known: `_invalidate` drops it
whole, as before.  `SmcRewrites` is a base of `CSAM`, using its CFG, scanner,
patcher, guards and clock.
"""
from __future__ import annotations


from bt.x86 import PAGE
from patcher.policy import JMP_SIZE
from runtime.views import FLAGS
from scanner.drop import fallthrough_preds, nodes_overlapping, span_membership


class SmcRewrites:
    def _invalidate_written(self, page: int, written: list[tuple[int, int]]) -> bool:
        """Drop what the guest's stores `written` ((linear address, size), any
        page) changed on linear `page`.  False when none of them lands on it
        (the caller then drops the page whole)."""
        ranges = [(max(w, page), min(w + n, page + PAGE)) for w, n in written
                  if w < page + PAGE and w + n > page]
        if not ranges:
            return False
        cfg = self.cfg
        node = cfg.graph._node
        nodes: set[int] = set()
        for lo, hi in ranges:
            nodes |= nodes_overlapping(cfg, lo, hi)
        patches: dict = {}
        while True:
            nodes = fallthrough_preds(cfg, nodes)
            spans = ranges + [(node[n]["start"], max(node[n]["end"], node[n]["start"] + 1))
                              for n in nodes]
            more: set[int] = set()
            for p in self._patches_over(spans):
                if p.site not in patches:
                    patches[p.site] = p
                    more |= nodes_overlapping(cfg, p.site, p.extent)
            if more <= nodes:
                break
            nodes |= more
        guards = in_spans(self.guards, spans) if self.guards else []
        frame = self.frame_of.get(page, page)
        self.stats.add("smc_invalidations")
        self.stats.add("smc_blocks_dropped", n=len(nodes))
        self._written.add(frame)
        # The guest's own stores into patch or guard bytes stay (the rest of
        # those bytes go back to the guest's), as `_invalidate` does.
        keep: list[tuple[int, bytes]] = []
        for p in patches.values():
            patched = self._raw(p.site, len(p.orig))
            for i in range(len(p.orig)):
                if self._guest_wrote(p.site + i, written, patched[i], p, i):
                    keep.append((p.site + i, patched[i:i + 1]))
        for g in guards:
            if any(w <= g < w + n for w, n in written):
                keep.append((g, self._raw(g, 1)))
        for site in sorted(patches):
            self.patcher._remove(patches[site])
            self.patcher.counters.add("removed")
        hide = set()
        for g in guards:
            self.mode._raw_write(g, self.guards.pop(g).data[:1])
            self.mode._flush(g, g + 1)
            hide.add(g & ~(PAGE - 1))
        for a, b in keep:
            self.mode._raw_write(a, b)
            self.mode._flush(a, a + 1)
            hide.add(a & ~(PAGE - 1))
        for pg in sorted(hide):
            self._hide(pg)
        self.scanner.invalidate_nodes(nodes, ranges)
        # Published again: the same flags (now without the dropped bytes), and
        # the block check's dirty mark of the page cleared.
        rec = cfg.pages.pages.get(page)
        if frame < self.vm.config.mem_bytes:
            self.clock.c.set_page(FLAGS, frame, rec.flags if rec is not None else None)
        if rec is None:
            self._published.discard(page)
            self.code_pages.discard(frame)
        return True

    def _patches_over(self, spans):
        """Installed patches whose replaced bytes or covered instructions
        overlap one of `spans` ([lo, hi) linear)."""
        out = {}
        for lo, hi in spans:
            for pg in range(max(lo - JMP_SIZE, 0) & ~(PAGE - 1), hi, PAGE):
                for p in self.patcher.patches_on_page(pg):
                    if p.site < hi and lo < p.extent:
                        out[p.site] = p
        return [out[s] for s in sorted(out)]


def in_spans(points, spans) -> list:
    """The `points` inside one of `spans` ([lo, hi)), in their order: a
    bisection per point over the spans merged (a drain after a store over freed
    init code drops ~20,000 blocks; a look at every span per guard was 0.8 s of
    a profiled boot)."""
    inside = span_membership(spans)
    return [g for g in points if inside(g)]
