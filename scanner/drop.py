"""Dropping only the code a store changed (CSAM's fine-grained invalidation).

A guest store into scanned bytes used to cost its whole page: every block on
it dropped and rescanned when it next ran (`Scanner.invalidate_page`).  Linux
rewrites its own text 5 bytes at a time (ftrace NOPs each `call __fentry__` at
boot, the alternatives and static keys patch single instructions), so a page
of kernel text was decoded again for each 5-byte store (docs/benchmarks.md,
"CSAM: dropping only what a store changed").  Here the CFG loses only

* the blocks with a byte in the written range, and the bad nodes in it;
* every block whose execution can run on into a dropped block without a new
  translated block starting (`fallthrough_preds`): Unicorn's block check
  (runtime/_clock.c) looks at a translated block's first instruction only,
  and a translated block runs on past a CFG block boundary unless the CFG
  block ends in a branch.  A block whose only way out is falling through
  into a dropped one is dropped with it, so a block the check still accepts
  never reaches bytes nobody scanned.

What the runtime knows beyond the CFG (patches over the dropped bytes, guards
in them) it removes itself and may widen the set (runtime/csam.py
`_invalidate_written`).  The edges kept blocks had into the dropped ones are
returned as work items ("orphans"): the scanner follows them again at its next
walk, as the first walk did, so the branch-target index keeps the targets the
patch policy must not cover.
"""
from __future__ import annotations

import bisect

from bt.x86 import PAGE, PAGE_MASK
from scanner.cfg import BAD_MARK, CFG, UNRESOLVED
from scanner.pages import CONT, START

MAX_INSN = 15       # an x86 instruction's longest encoding


def nodes_overlapping(cfg: CFG, lo: int, hi: int) -> set[int]:
    """Blocks with a byte in [lo, hi) and bad nodes at an address in it."""
    out: set[int] = set()
    pages = cfg.pages.pages
    node = cfg.graph._node
    a = lo
    while a < hi:
        # the next scanned byte, found in the page's flags rather than byte by
        # byte (a store over a page of freed init code: 4,096 bytes a time)
        base = a & PAGE_MASK
        end = min(hi, base + PAGE)
        rec = pages.get(base)
        if rec is None:
            a = end
            continue
        f, i, j = rec.flags, a - base, end - base
        k = f.find(START, i, j)
        c = f.find(CONT, i, k if k >= 0 else j)
        k = c if c >= 0 else k
        if k < 0:
            a = end
            continue
        a = base + k
        b = cfg.block_containing(a)
        if b is not None:
            out.add(b)
            a = max(a + 1, node[b]["end"])
            continue
        a += 1
    marks = cfg.marks.pages
    for base in range(lo & PAGE_MASK, hi, PAGE):
        m = marks.get(base)
        if m is None:
            continue
        i = m.find(BAD_MARK, max(lo - base, 0), min(hi - base, PAGE))
        while i >= 0:
            out.add(base + i)
            i = m.find(BAD_MARK, i + 1, min(hi - base, PAGE))
    return out


def _falls_only_into(cfg: CFG, p, n) -> bool:
    """Block `p`'s one way out is falling through into `n`: its last
    instruction is no branch (a jcc's not-taken edge is a fallthrough too, but
    the jcc brings a cond-jump edge; a call's next block is a "return" edge)."""
    succ = cfg.graph._succ[p]
    if len(succ) != 1:
        return False
    d = succ.get(n)
    return d is not None and d["kind"] == "fallthrough" and d.get("also") is None


def fallthrough_preds(cfg: CFG, nodes: set[int]) -> set[int]:
    """`nodes` and every block that can run on into one of them without a
    branch (transitively)."""
    out = set(nodes)
    pred, node = cfg.graph._pred, cfg.graph._node
    todo = list(nodes)
    while todo:
        n = todo.pop()
        for p in pred.get(n, ()):
            if p in out or p == UNRESOLVED or node[p]["kind"] != "block":
                continue
            if _falls_only_into(cfg, p, n):
                out.add(p)
                todo.append(p)
    return out


def drop(cfg: CFG, nodes: set[int]) -> list[tuple]:
    """Remove `nodes` (their scanned bytes unmarked, their nodes and edges
    gone).  Returns the edges kept blocks had into them as worklist items
    (site, target, kind, attrs), a second item for an edge's `also` kind.
    Bad nodes that may be verdicts on the dropped code go too: those the
    dropped blocks run into (a zero run counts the block's `00 00`s) and the
    "overlap" ones whose instruction could reach into dropped bytes; any of
    them comes back when a walk reaches its address again."""
    node, pred, succ = cfg.graph._node, cfg.graph._pred, cfg.graph._succ
    nodes = set(nodes)
    spans = [(node[n]["start"], max(node[n]["end"], node[n]["start"] + 1)) for n in nodes]
    nodes |= {v for n in nodes for v in succ[n] if v != UNRESOLVED and node[v]["kind"] == "bad"}
    # An "overlap" verdict stands on the instruction it fell inside: one up to
    # MAX_INSN bytes before a dropped block reaching into it, or one of the
    # dropped block's own (a branch retargeted into the middle of a block's
    # instruction, that block then dropped: the target must be walked again).
    for lo, hi in spans:
        nodes |= {b for b in nodes_overlapping(cfg, max(lo - MAX_INSN, 0), hi)
                  if node[b]["kind"] == "bad" and node[b]["reason"].startswith("overlap")}
    orphans = []
    for n in nodes:
        for src, d in pred[n].items():
            if src in nodes:
                continue
            attrs = {k: v for k, v in d.items() if k not in ("kind", "site", "also")} or None
            orphans.append((d["site"], n, d["kind"], attrs))
            if d.get("also") is not None:
                orphans.append((d["site"], n, d["also"], None))
    for n in nodes:
        d = node[n]
        if d["kind"] == "block":
            cfg.pages.unmark(d["start"], d["end"] - d["start"])
    cfg.remove_nodes(nodes)
    return orphans


def span_of(cfg: CFG, nodes) -> tuple[int, int] | None:
    """[lowest start, highest end) of `nodes`, or None for none."""
    node = cfg.graph._node
    if not nodes:
        return None
    return (min(node[n]["start"] for n in nodes),
            max(max(node[n]["end"], node[n]["start"] + 1) for n in nodes))


def span_membership(spans):
    """A test `inside(x)` for the union of `spans` ([lo, hi)): the spans merged
    once, then a bisection per point, not a comparison with each span (ftrace
    and freed init code leave thousands of both between two walks)."""
    los, his = [], []
    for lo, hi in sorted(spans):
        if his and lo <= his[-1]:
            his[-1] = max(his[-1], hi)
        else:
            los.append(lo)
            his.append(hi)

    def inside(x) -> bool:
        i = bisect.bisect_right(los, x) - 1
        return i >= 0 and x < his[i]
    return inside


def outside(orphans: list[tuple], gone: list[tuple[int, int]]) -> list[tuple]:
    """The orphan items whose branch site lies in none of the `gone` spans."""
    if not gone:
        return list(orphans)
    inside = span_membership(gone)
    out = [o for o in orphans if not inside(o[0])]
    return out
