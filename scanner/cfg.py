"""The control-flow graph the scanner produces, kept apart from the scanner.

`CFG.graph` is a plain networkx.DiGraph.  Nodes:
  * basic blocks, keyed by start address (int):
      kind="block", start, end (exclusive),
      insns: an `Insns` (scanner/insns.py), a sequence of rows
             (addr, size, mnemonic, op_str, bytes) stored as the block's bytes
             and instruction sizes, decoded on first use,
      sensitive=((addr, catalog row name, class value), ...)
    (immutable, and a block's dict then holds nothing the cyclic GC must
    walk - 1.5 million instructions of Debian's kernel made a collection
    after a scan cost ~1 s.)
  * bad blocks, keyed by address (int): kind="bad", start=end=addr, reason
    (undecodable / overlap / unmapped / truncated / cap).
  * the single node "unresolved": kind="unresolved"; every branch whose target
    the scanner could not work out has an edge to it.
Edges carry kind = fallthrough | jump | cond-jump | call | return | indirect |
unresolved and site = the address of the branch instruction.  "return" is the
edge from a block ending in a call to the block at the call's return address
(angr's "fakeret"); `ret` itself has no edge because its target is unknown.
"indirect" is a branch through memory the scanner could read (`via` = the
pointer's address).  When two kinds join the same pair of blocks (a `jcc` to
the next instruction, `call $+5`), the first is `kind` and the other is `also`.

Branch targets (entries, and nodes with an incoming jump/cond-jump/call/return/
indirect edge) are kept in an index so `branch_targets_in` is a bisection, not
a walk over the graph.  `marks` records, per page, which addresses hold a
block node or a bad node, so the block holding an address is a backward
search on its page (`block_of`), not a per-instruction dictionary.  The CFG's
own methods keep both current; code that edits `graph` directly must call
`reindex()` afterwards.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import networkx as nx

from bt.x86 import PAGE, PAGE_MASK
from scanner.insns import Insns
from scanner.pages import CONT, START, UNSCANNED, PageMap

UNRESOLVED = "unresolved"
EDGE_KINDS = ("fallthrough", "jump", "cond-jump", "call", "return", "indirect", "unresolved")
TARGET_KINDS = frozenset({"jump", "cond-jump", "call", "return", "indirect"})
TARGET_OVERFLOW = 4096   # new branch targets held apart from the bulk before a merge


BLOCK_MARK, BAD_MARK = 1, 2


class NodeMarks:
    """Page base -> bytearray(PAGE): BLOCK_MARK where a block node starts,
    BAD_MARK where a bad node sits, 0 elsewhere.  The C walk reads and writes
    these bytearrays directly (scanner/_walk.c)."""
    __slots__ = ("pages",)

    def __init__(self):
        self.pages: dict[int, bytearray] = {}

    def set(self, addr: int, mark: int) -> None:
        base = addr & PAGE_MASK
        m = self.pages.get(base)
        if m is None:
            m = self.pages[base] = bytearray(PAGE)
        m[addr - base] = mark

    def clear(self, addr: int) -> None:
        m = self.pages.get(addr & PAGE_MASK)
        if m is not None:
            m[addr & (PAGE - 1)] = 0

    def get(self, addr: int) -> int:
        m = self.pages.get(addr & PAGE_MASK)
        return m[addr & (PAGE - 1)] if m is not None else 0


@dataclass(frozen=True)
class Site:
    addr: int
    size: int
    name: str          # catalog row name
    klass: str         # catalog class value
    block: int
    mnemonic: str
    op_str: str
    data: bytes


@dataclass(frozen=True)
class Block:
    start: int
    end: int
    insns: tuple
    sensitive: tuple


class CFG:
    def __init__(self):
        self.graph = nx.DiGraph()
        self.graph.add_node(UNRESOLVED, kind="unresolved")
        self.pages = PageMap()
        self.entries: dict[int, list[str]] = {}   # address -> labels ("entry", "idt:0x0e", ...)
        self.pending: list[int] = []              # targets left unscanned when a cap was hit
        # Branches a bounded walk left for later (scanner/scan.py `walk_bound`):
        # target -> work items (site, target, kind, attrs), linked when a walk
        # makes the target a node.  Not saved with the CFG (scanner/serialize.py).
        self.deferred: dict[int, list[tuple]] = {}
        self.new_unresolved: list[int] = []       # sites linked to "unresolved" by the current walk
        self.info: dict = {}
        # The branch-target index, kept for `branch_targets_in`'s range queries
        # without sorting every target per query: `_tset` is the truth; the two
        # sorted lists may still hold targets removed since (`_tgone` counts the
        # removals) and duplicates of re-added ones, filtered out per query.
        self._tset: set[int] = set()     # branch targets and entries
        self._tsorted: list[int] = []    # sorted, possibly stale: the bulk...
        self._tover: list[int] = []      # ...a short sorted overflow merged into it now and then...
        self._tnew: list[int] = []       # ...and the targets added since the last query, unsorted
        self._tgone = 0                  # removals since `_tsorted` was rebuilt from `_tset`
        self.marks = NodeMarks()         # where block and bad nodes are

    # --- construction helpers (used by the scanner and by load/merge) --------
    def add_block(self, start: int, end: int, insns, sensitive) -> None:
        if not isinstance(insns, Insns):
            insns = Insns.from_rows(insns)
        self.graph.add_node(start, kind="block", start=start, end=end, insns=insns,
                            sensitive=tuple(sensitive))
        self.marks.set(start, BLOCK_MARK)

    def add_bad(self, addr: int, reason: str) -> None:
        self.graph.add_node(addr, kind="bad", start=addr, end=addr, insns=(),
                            sensitive=(), reason=reason)
        self.marks.set(addr, BAD_MARK)

    # The scanner's hot path: the effects of add_block and of an edge, written
    # straight into the DiGraph's dicts (networkx's documented `_node`/`_succ`/
    # `_pred` storage; the edge dict is shared by both sides as networkx does).
    # The caller must call `touched()` once when done.
    def put_block(self, start: int, end: int, insns, sensitive) -> None:
        if not isinstance(insns, Insns):
            insns = Insns.from_rows(insns)
        sensitive = tuple(sensitive)
        self.marks.set(start, BLOCK_MARK)
        g = self.graph
        if start in g._node:
            g._node[start].update(kind="block", start=start, end=end, insns=insns,
                                  sensitive=sensitive)
            return
        g._succ[start] = {}
        g._pred[start] = {}
        g._node[start] = {"kind": "block", "start": start, "end": end, "insns": insns,
                          "sensitive": sensitive}

    def link(self, src, dst, kind: str, site: int, attrs: dict | None = None) -> None:
        """An edge src -> dst (kind, site, attrs) between existing nodes; a second kind
        between the same pair becomes `also`; target kinds enter the target index."""
        g = self.graph
        succ = g._succ[src]
        data = succ.get(dst)
        if data is None:
            data = {"kind": kind, "site": site}
            if attrs:
                data.update(attrs)
            succ[dst] = data
            g._pred[dst][src] = data
            if dst == UNRESOLVED:
                self.new_unresolved.append(site)
        elif data["kind"] != kind and data.get("also") is None:
            data["also"] = kind
        else:
            return
        if kind in TARGET_KINDS and dst != UNRESOLVED:
            self._add_target(dst)

    def defer(self, item: tuple) -> None:
        """Keep a branch (a work item) whose target a bounded walk did not decode;
        the target is a branch target from now on, as if the edge existed."""
        self.deferred.setdefault(item[1], []).append(item)
        self._add_target(item[1])

    def undefer(self, target: int, lo: int, hi: int) -> None:
        """Forget `target`'s deferred branches that lie in [lo, hi) (their
        blocks were dropped); with the last of them the target leaves the
        target index unless something else still makes it one."""
        items = self.deferred.get(target)
        if items is None:
            return
        keep = [it for it in items if not lo <= it[0] < hi]
        if keep:
            self.deferred[target] = keep
            return
        del self.deferred[target]
        if target in self._tset and target not in self.entries and not (
                target in self.graph._node and any(
                    d["kind"] in TARGET_KINDS or d.get("also") in TARGET_KINDS
                    for d in self.graph._pred[target].values())):
            self._tset.discard(target)
            self._tgone += 1

    def touched(self) -> None:
        """Tell networkx its graph changed (drops its cached backend conversions)."""
        clear = getattr(nx, "_clear_cache", None)
        if clear is not None:
            clear(self.graph)

    def add_entry(self, addr: int, label: str) -> None:
        labels = self.entries.setdefault(addr, [])
        if label not in labels:
            labels.append(label)
        self._add_target(addr)

    def _add_target(self, addr: int) -> None:
        if addr not in self._tset:
            self._tset.add(addr)
            self._tnew.append(addr)

    def reindex(self) -> None:
        """Rebuild the branch-target index and the node marks from the graph and the entries."""
        self.marks = NodeMarks()
        for n, d in self.graph.nodes(data=True):
            if n != UNRESOLVED:
                self.marks.set(n, BLOCK_MARK if d["kind"] == "block" else BAD_MARK)
        t = set(self.entries) | set(self.deferred)
        for u, v, d in self.graph.edges(data=True):
            if v != UNRESOLVED and (d["kind"] in TARGET_KINDS or d.get("also") in TARGET_KINDS):
                t.add(v)
        self._tset = t
        self._tsorted = sorted(t)
        self._tover = []
        self._tnew = []
        self._tgone = 0

    def remove_nodes(self, nodes) -> None:
        """Remove nodes and their edges; successors that lose their last
        incoming branch stop being branch targets.  On the DiGraph's dicts, as
        `put_block` does: a view move on Debian's kernel drops ~100 blocks a
        page, 145,000 in the first 20 M instructions, and networkx's
        `remove_node` cost ~15 us each (2.3 s)."""
        g = self.graph
        node, succ, pred = g._node, g._succ, g._pred
        marks = self.marks.pages
        tset = self._tset
        succs = set()
        for n in nodes:
            del node[n]
            out = succ.pop(n)
            into = pred.pop(n)
            for v in out:
                if v != n:
                    del pred[v][n]
            for u in into:
                if u != n:
                    del succ[u][n]
            succs.update(out)
            if n != UNRESOLVED:
                m = marks.get(n & PAGE_MASK)
                if m is not None:
                    m[n & (PAGE - 1)] = 0
            if n not in self.entries and n in tset and n not in self.deferred:
                tset.discard(n)
                self._tgone += 1
        for v in succs:
            if v in node and v in tset and v not in self.entries and v not in self.deferred and not any(
                    d["kind"] in TARGET_KINDS or d.get("also") in TARGET_KINDS
                    for d in pred[v].values()):
                tset.discard(v)
                self._tgone += 1
        self.touched()

    # --- queries ---------------------------------------------------------------
    def blocks(self) -> list[int]:
        return sorted(n for n, d in self.graph.nodes(data=True) if d["kind"] == "block")

    def block(self, addr: int) -> Block:
        d = self.graph.nodes[addr]
        if d["kind"] != "block":
            raise KeyError(f"{addr!r} is a {d['kind']} node, not a block")
        return Block(d["start"], d["end"], tuple(d["insns"]), tuple(d["sensitive"]))

    def bad_blocks(self) -> list[tuple[int, str]]:
        return sorted((n, d["reason"]) for n, d in self.graph.nodes(data=True) if d["kind"] == "bad")

    def instructions(self):
        """Every scanned instruction (addr, size, mnemonic, op_str, bytes), by address."""
        for b in self.blocks():
            yield from self.graph.nodes[b]["insns"]

    def instruction_count(self) -> int:
        return sum(len(d["insns"]) for _, d in self.graph.nodes(data=True) if d["kind"] == "block")

    def site_at(self, addr: int) -> Site | None:
        """The sensitive site at `addr`, or None (without a walk over the graph)."""
        b = self.block_of(addr)
        if b is None:
            return None
        d = self.graph._node[b]
        for a, name, klass in d["sensitive"]:
            if a == addr:
                ins = d["insns"]
                _a, size, mnem, op, data = ins[ins.index_of(addr)]
                return Site(addr, size, name, klass, b, mnem, op, data)
        return None

    def sensitive_sites(self) -> list[Site]:
        out = []
        for b in self.blocks():
            d = self.graph.nodes[b]
            if not d["sensitive"]:
                continue
            by_addr = {i[0]: i for i in d["insns"]}
            for addr, name, klass in d["sensitive"]:
                a, size, mnem, op, data = by_addr[addr]
                out.append(Site(addr, size, name, klass, b, mnem, op, data))
        return out

    def unresolved_sites(self) -> list[int]:
        """Addresses of branches whose target the scanner could not work out."""
        return sorted(d["site"] for _, _, d in self.graph.in_edges(UNRESOLVED, data=True))

    def branch_targets_in(self, lo: int, hi: int) -> list[int]:
        """Addresses in [lo, hi) that control may arrive at other than by falling
        through: targets of jumps/calls, call return addresses, entry points.

        Without a full sort per query: re-sorting every target after each
        removal (a CSAM invalidation drops a page's blocks) took ~50 ms a time
        under Debian's kernel under bt, and merging each query's new targets
        into the whole list ~10 ms (docs/benchmarks.md, "Linux under bt: where
        the time goes").  New targets collect in a short sorted overflow list,
        merged into the bulk when it grows past TARGET_OVERFLOW; removed targets
        stay in the lists until they are a quarter of the bulk, and each
        answer keeps only what `_tset` still holds."""
        if self._tnew:
            over = self._tover
            over.extend(self._tnew)
            self._tnew = []
            over.sort()
            if len(over) > TARGET_OVERFLOW:
                self._tsorted.extend(over)     # two sorted runs: timsort merges them
                self._tsorted.sort()
                self._tover = []
        if self._tgone > max(TARGET_OVERFLOW, len(self._tsorted) // 4):
            self._tsorted = sorted(self._tset)
            self._tover = []
            self._tgone = 0
        tset = self._tset
        t = self._tsorted
        out = [a for a in t[bisect.bisect_left(t, lo):bisect.bisect_left(t, hi)] if a in tset]
        o = self._tover
        if o:
            out += [a for a in o[bisect.bisect_left(o, lo):bisect.bisect_left(o, hi)] if a in tset]
        if len(out) > 1:
            out = sorted(set(out))             # a target removed and added again is listed twice
        return out

    def code_pages(self) -> list[int]:
        return self.pages.code_pages()

    def block_containing(self, addr: int) -> int | None:
        """Start of the block with an instruction byte at `addr`, or None.

        Blocks never share a byte, so it is the nearest block start at or
        below `addr`, searched back through scanned bytes only (a block's
        bytes are contiguous): a few bytearray searches, whatever the graph's
        size."""
        pages, marks = self.pages.pages, self.marks.pages
        base, off = addr & PAGE_MASK, addr & (PAGE - 1)
        while True:
            m = marks.get(base)
            j = m.rfind(BLOCK_MARK, 0, off + 1) if m is not None else -1
            if j >= 0:
                d = self.graph._node[base + j]
                return base + j if addr < d["end"] else None
            rec = pages.get(base)
            if rec is None or rec.flags[0] == UNSCANNED or base == 0:
                return None
            base, off = base - PAGE, PAGE - 1

    def block_of(self, addr: int) -> int | None:
        """Start of the block holding the instruction that starts at `addr`, or None
        (`addr` is not the first byte of an instruction of a block)."""
        if self.pages.state(addr) != START:
            return None
        return self.block_containing(addr)

    def is_scanned(self, addr: int) -> bool:
        """True when `addr` is the first byte of a scanned instruction."""
        return self.pages.state(addr) == 1

    def stats(self) -> dict:
        by_class: dict[str, int] = {}
        for s in self.sensitive_sites():
            by_class[s.klass] = by_class.get(s.klass, 0) + 1
        return {
            "blocks": len(self.blocks()),
            "instructions": self.instruction_count(),
            "sensitive": dict(sorted(by_class.items())),
            "unresolved": len(self.unresolved_sites()),
            "bad_blocks": len(self.bad_blocks()),
            "pages": len(self.code_pages()),
            "entries": len(self.entries),
        }

    # --- combining -------------------------------------------------------------
    def split_block(self, start: int, at: int) -> None:
        """Cut block `start` in two at instruction address `at` (a new block start).

        Works on the DiGraph's dicts directly, as `put_block`/`link` do: the
        scanner splits a block for every branch into the middle of one (16,000
        times on Debian's kernel), and networkx's per-edge calls cost ~40 us a
        split."""
        g = self.graph
        node, succ, pred = g._node, g._succ, g._pred
        d = node[start]
        k = d["insns"].index_of(at)
        head, tail = d["insns"].split(k)
        tail_sens = tuple(s for s in d["sensitive"] if s[0] >= at)
        self.put_block(at, d["end"], tail, tail_sens)
        mine = succ[start]
        new = succ[at]
        for dst, data in list(mine.items()):
            del mine[dst]
            del pred[dst][start]
            old = new.get(dst)
            if old is None:
                old = new[dst] = {}
                pred[dst][at] = old
            old.update(data)
        d["insns"] = head
        d["end"] = at
        d["sensitive"] = tuple(s for s in d["sensitive"] if s[0] < at)
        self.link(start, at, "fallthrough", head.addr_at(-1))
        self.touched()

    def merge(self, other: "CFG") -> "CFG":
        """Add another scan's result (of the same memory) to this one, as one
        scanner given both scans' entries would have: a block of `other` whose
        instructions overlap differently decoded bytes of this CFG (a scan
        that started inside an instruction) becomes a bad "overlap" node, so
        blocks never share a byte (what `block_of` relies on)."""
        g = self.graph
        self.pages.merge_records(other.pages)
        rejected = set()
        for n, d in sorted(other.graph.nodes(data=True), key=lambda x: (isinstance(x[0], str), x[0])):
            if n == UNRESOLVED:
                continue
            mine = g._node.get(n)
            if d["kind"] == "block":
                if mine is not None and mine["kind"] == "block":
                    continue
                ins = d["insns"]
                if not self._fits(ins):
                    rejected.add(n)
                    if mine is None:
                        self.add_bad(n, "overlap: bytes of an instruction already scanned")
                    continue
                if mine is not None:                     # a bad node becomes the block
                    mine.pop("reason", None)
                g.add_node(n, **d)
                for a, size in zip(ins.addrs(), ins.sizes):
                    self.pages.mark(a, size)
            elif mine is None:
                g.add_node(n, **d)
        for u, v, d in other.graph.edges(data=True):
            if u not in rejected and u in g and v in g and not g.has_edge(u, v):
                g.add_edge(u, v, **d)
        for a, labels in other.entries.items():
            for lab in labels:
                self.add_entry(a, lab)
        self.pending = sorted(set(self.pending) | set(other.pending))
        self._normalize()
        self.reindex()          # the branch-target index and the node marks, from the graph
        return self

    def _fits(self, insns) -> bool:
        """True when every instruction of `insns` is unscanned here or scanned
        here as the same instruction (same start, same length)."""
        state = self.pages.state
        for a, size in zip(insns.addrs(), insns.sizes):
            for i in range(size):
                st = state((a + i) & 0xFFFFFFFF)
                if st != UNSCANNED and st != (START if i == 0 else CONT):
                    return False
            if state(a) == START and state((a + size) & 0xFFFFFFFF) == CONT:
                return False                     # ours is longer
        return True

    def _normalize(self) -> None:
        """Split blocks that contain another block's start (after a merge)."""
        changed = True
        while changed:
            changed = False
            starts = set(self.blocks())
            for b in sorted(starts):
                for a in self.graph.nodes[b]["insns"].addrs()[1:]:
                    if a in starts:
                        self.split_block(b, a)
                        changed = True
                        break
