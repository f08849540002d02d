"""Recursive-descent code discovery (CSAM style) into a CFG.

Rules (issue 3):
  * follow fall-through, direct jumps, conditional jumps (both ways), direct
    calls and their return fall-through, and `call/jmp dword ptr [disp32]`
    through memory that can be read (edge kind "indirect");
  * a path stops at ret/retf/iret, int3, ud0/1/2, sysenter/sysexit and
    unconditional jumps; `hlt` does not stop it (execution resumes after an
    interrupt), so a `hlt; jmp $-1` loop ends at its jump, where the code says so;
  * every other indirect branch gets an edge to the "unresolved" node, with the
    branch's address as `site`: the runtime must expect unscanned code there;
  * far jumps/calls with an immediate pointer are followed at their offset
    (flat code segments assumed), with far=True on the edge -- or, with
    `defer_far`, deferred as a bounded walk defers (below) until their target
    runs: the segment it runs in is known then (bt: a far jump into a 16-bit
    code segment or real mode, whose code this 32-bit decoder would misread);
  * bytes that cannot be decoded, that overlap an instruction already scanned,
    or that are not readable become "bad" nodes with a reason; nothing raises.

The traversal is a worklist, never recursion, and each byte is decoded into at
most one instruction, so it terminates on any input; `max_insns` bounds the
work further (targets left over are listed in `cfg.pending`).

`walk_bound` (None: no bound) bounds one walk instead, for lazy scanning: once a
walk has decoded that many instructions, a branch whose target still has to be
decoded is *deferred* rather than followed -- kept in `cfg.deferred` (target ->
work items) with its target in the branch-target index, no edge yet, no
`unresolved` link.  The runtime's block check scans such a target when it runs;
any walk that reaches a deferred target (and so makes it a node) links its
deferred edges, and a drop of the branch's block forgets them
(`_purge_deferred`).  Fall-through items are never deferred: a translated block
may run on over a fall-through boundary without a block check (a cut at
`max_block_insns`), which a jcc's, a call's or a jump's edge never does.  The worklist is
last in, first out: depth first, the order recursion would take (a block's
fall-through before its branch target, a call's return address before the
callee).  Depth first keeps the walk on nearby code, and the CFG's tables are
keyed by address: on Debian's kernel the same walk breadth first (9,500
entries interleaved) ran 1.6x slower, from cache misses (docs/benchmarks.md).
"""
from __future__ import annotations

import contextlib
import gc
import re
import struct
import time
from collections import deque
from typing import Callable, Iterable

from bt.catalog import MAYBE_SENSITIVE_FIRST_BYTE, classify_bytes
from bt.x86 import PAGE, PAGE_MASK
from scanner import drop, native
from scanner.cfg import BAD_MARK, BLOCK_MARK, CFG, UNRESOLVED
from scanner.decode import ADDR_MASK, Decoder
from scanner.flow import FLOW
from scanner.insns import Insns
from scanner.pages import CONT, START, UNSCANNED

ReadMem = Callable[[int, int], "bytes | None"]

_ABS_MEM = re.compile(r"^dword ptr (?:ds:)?\[(0x[0-9a-f]+|\d+)\]$")
_FAR_IMM = re.compile(r"^(0x[0-9a-f]+|\d+)\s*[:,]\s*(0x[0-9a-f]+|\d+)$")


ZERO_RUN_LIMIT = 8


def _int(s: str) -> int:
    return int(s, 0)


class Scanner:
    def __init__(self, read_mem: ReadMem, cfg: CFG | None = None, *,
                 max_insns: int = 20_000_000, max_block_insns: int = 8192,
                 chunk: int = 2048, engine: str = "auto", walk_bound: int | None = None,
                 defer_far: bool = False):
        self.read_mem = read_mem
        self.defer_far = defer_far
        self.cfg = cfg if cfg is not None else CFG()
        self.dec = Decoder(read_mem, chunk=chunk)
        self.max_insns = max_insns
        self.max_block_insns = max_block_insns
        self.walk_bound = walk_bound
        # Pages of deferred items' sites -> their targets (`_purge_deferred`;
        # may name targets whose items went since: checked there).
        self._deferred_from: dict[int, set[int]] = {}
        self.insns_scanned = 0
        self.scan_seconds = 0.0
        # (addr, catalog name, class) of the sensitive instructions the last
        # scan call decoded: new code, since each byte is decoded once.
        self.new_sites: list[tuple] = []
        # Sites of the edges to "unresolved" the last walk added.
        self.new_unresolved: list[int] = []
        self._work: deque = deque()
        # Edges of kept blocks into blocks `invalidate_nodes` dropped: followed
        # again at the next walk (scanner/drop.py), as the first walk did,
        # except those whose branch was dropped since (in `_gone`, the spans
        # dropped since the last walk; nothing is added between walks).
        self._orphans: list[tuple] = []
        self._gone: list[tuple[int, int]] = []
        self.engine, self.native = _engine(engine)

    @property
    def decoded(self) -> int:
        """Instructions capstone decoded for this scanner (either engine)."""
        return self.dec.decoded + (self.native.decoded if self.native is not None else 0)

    # --- public entry points ----------------------------------------------------
    def scan(self, entries: Iterable[int], label: str = "entry") -> CFG:
        """Scan from every address in `entries`; returns the (shared) CFG."""
        with _no_gc():
            for a in entries:
                a &= ADDR_MASK
                self.cfg.add_entry(a, label)
                self._work.append((None, a, None, None))
            return self._run()

    def scan_from(self, addr: int, label: str = "from") -> CFG:
        """Incremental scan (first execution of unscanned code, a fault site)."""
        return self.scan([addr], label)

    def scan_idt(self, idt_base: int, idt_limit: int) -> CFG:
        """Scan from the handler of every present interrupt/trap gate of an IDT."""
        return self.scan_gates(idt_gates(self.read_mem, idt_base, idt_limit))

    def scan_gates(self, gates: Iterable[tuple[int, int]]) -> CFG:
        for vec, off in gates:
            self.cfg.add_entry(off, f"idt:{vec:#04x}")
            self._work.append((None, off, None, None))
        return self._run()

    def invalidate_page(self, base: int) -> list[int]:
        """Forget every block with bytes on page `base` (its code changed).
        Returns their start addresses, which the caller may rescan."""
        base &= PAGE_MASK
        # ... and the blocks below it that run on into it without a branch
        # (their translated blocks would run the page's new bytes unchecked:
        # scanner/drop.py)
        hit = drop.fallthrough_preds(self.cfg, self.nodes_on_page(base))
        node = self.cfg.graph._node
        pm = self.cfg.pages
        # Every scanned byte of the page belongs to a block in `hit`: the page's
        # flags go at once, and only blocks running over its edges are unmarked
        # (on the neighbouring pages; a block's bytes are contiguous).  The cost
        # is the page's nodes, not their instructions' bytes.
        pm.clear(base)
        for n in hit:
            d = node[n]
            if d["kind"] == "block" and (d["start"] < base or d["end"] > base + PAGE):
                pm.unmark(d["start"], d["end"] - d["start"])
        if self._orphans:
            # every node hit has a byte on the page: one interval holds them all
            self._gone.append((min([base] + [node[n]["start"] for n in hit]),
                               max([base + PAGE] + [node[n]["end"] for n in hit])))
        if self.cfg.deferred:
            self._purge_deferred([(min([base] + [node[n]["start"] for n in hit]),
                                   max([base + PAGE] + [node[n]["end"] for n in hit]))])
        self.cfg.remove_nodes(hit)
        self.dec.invalidate(base, base + PAGE)
        return sorted(hit)

    def invalidate_nodes(self, nodes: set[int], written=()) -> None:
        """Forget `nodes` (blocks and bad nodes whose bytes changed, with what
        runs on into them: scanner/drop.py); the rest of their pages stays
        scanned.  The edges kept blocks had into them are followed again at the
        next walk; orphans whose branch was in a dropped block go.  `written`:
        the stores' [lo, hi) ranges, forgotten by the decoder's cache too (the
        Python walk's sweeps cache bytes no block holds yet)."""
        for lo, hi in written:
            self.dec.invalidate(lo, hi)
        if not nodes:
            return
        node = self.cfg.graph._node
        spans = [(node[n]["start"], max(node[n]["end"], node[n]["start"] + 1)) for n in nodes]
        self._gone += spans
        self._purge_deferred(spans)
        self._orphans += drop.drop(self.cfg, nodes)
        for lo, hi in spans:
            self.dec.invalidate(lo, hi)

    def nodes_on_page(self, base: int) -> set[int]:
        """Blocks with a byte on page `base` (start < base + PAGE and end > base)
        and bad nodes on it, found through the node marks rather than by walking
        every node: the block or bad nodes marked on the page and the block that
        runs into it from below.  (tests/scanner/test_fast_paths.py checks this
        against the walk over all nodes.)"""
        hit: set[int] = set()
        m = self.cfg.marks.pages.get(base)
        if m is not None:
            for mark in (BLOCK_MARK, BAD_MARK):
                i = m.find(mark)
                while i >= 0:
                    hit.add(base + i)
                    i = m.find(mark, i + 1)
        b = self.cfg.block_containing(base)
        if b is not None:
            hit.add(b)
        return hit

    def rescan_dirty(self) -> list[int]:
        """Rescan every dirty page: drop its blocks, scan again from the blocks'
        former starts that were entries or targets.  Returns the pages redone."""
        pages = self.cfg.pages.dirty_pages()
        for base in pages:
            starts = self.invalidate_page(base)
            self.cfg.pages.drop(base)
            targets = [s for s in starts if s in self.cfg.entries] or starts
            for s in targets:
                self._work.append((None, s, None, None))
        self._run()
        return pages

    # --- the traversal -------------------------------------------------------
    def _run(self) -> CFG:
        if self._orphans:
            # Those whose branch is still scanned link from its block as usual.
            state = self.cfg.pages.state
            kept = [o for o in drop.outside(self._orphans, self._gone) if state(o[0]) == START]
            self._work.extendleft(reversed(kept))
        self._orphans, self._gone = [], []
        with _no_gc():
            return self._run_worklist()

    def _run_worklist(self) -> CFG:
        t0 = time.perf_counter()
        cfg = self.cfg
        gnode = cfg.graph._node
        pages = cfg.pages.pages
        link = cfg.link
        owner = cfg.block_of
        touched: set[int] = set()
        self.new_sites = []
        cfg.new_unresolved = self.new_unresolved = []
        work = self._work
        deferred = cfg.deferred
        # The walk decodes new blocks until `insns_scanned` reaches `bound`.
        bound = self.insns_scanned + self.walk_bound if self.walk_bound is not None else None
        if self.native is not None:
            # The loop below, in C (scanner/_walk.c).
            self.insns_scanned = self.native.run(native.WalkJob(
                work, cfg, self.new_sites, touched, self.read_mem, self._branch, self.dec.why_not,
                self.max_insns, self.insns_scanned, self.max_block_insns,
                -1 if bound is None else bound, self._defer))
        pop = work.pop
        while work:
            item = pop()
            site, target, kind, attrs = item
            if target is None:
                link(owner(site), UNRESOLVED, "unresolved", site)
                continue
            if target not in gnode:
                if self.insns_scanned >= self.max_insns:
                    cfg.pending.append(target)
                    if site is not None:
                        link(owner(site), UNRESOLVED, "unresolved", site)
                    continue
                rec = pages.get(target & PAGE_MASK)
                st = rec.flags[target & 0xFFF] if rec is not None else UNSCANNED
                if st == START:
                    cfg.split_block(owner(target), target)
                elif st == CONT:
                    cfg.add_bad(target, "overlap: inside an instruction already scanned")
                elif bound is not None and self.insns_scanned >= bound and site is not None \
                        and kind != "fallthrough":
                    self._defer(item)
                    continue
                else:
                    self._decode_block(target, touched)
            if deferred:
                # the target is a node now: the branches deferred to it link
                later = deferred.pop(target, None)
                if later is not None:
                    work.extend(later)
            if site is not None:
                link(owner(site), target, kind, site, attrs)
        cfg.touched()
        cfg.pending = sorted(set(cfg.pending))
        cfg.pages.update_hashes(self.read_mem, touched)
        self.scan_seconds += time.perf_counter() - t0
        cfg.info["scan_seconds"] = self.scan_seconds
        cfg.info["decoded"] = self.decoded
        cfg.info["engine"] = self.engine
        return cfg

    def _decode_block(self, start: int, touched: set[int]) -> None:
        """Decode the block at `start` (not yet a node, its first byte unscanned).

        Most instructions need only the fast path: `horizon` is the first
        address where the page map says something was already scanned (or the
        page ends), so an instruction that ends before it cannot overlap
        scanned code.  Anything else (the block's first instruction, a page
        boundary, scanned bytes ahead, the size cap) goes through `_check`,
        which applies the rules one by one.
        """
        cfg = self.cfg
        gnode = cfg.graph._node
        dec = self.dec
        cget = dec.cache.get
        maybe = MAYBE_SENSITIVE_FIRST_BYTE
        flow_of = FLOW.get
        cap = self.max_block_insns
        insns: list = []
        sens: list = []
        append = insns.append
        n = 0
        a = start
        horizon = start         # forces `_check` on the first instruction
        flags = None            # page flags of the instructions below `horizon`
        follow = None           # "fall" or the successor work items
        bad = None              # reason, when the block ends at undecodable/overlapping bytes
        zeros = 0               # consecutive `00 00` (add [eax], al): zero-filled memory
        while True:
            rec = cget(a)
            if rec is None:
                rec = dec.fill(a)
                if rec is None:
                    bad = dec.why_not(a)
                    break
            size = rec[1]
            if a + size > horizon or n >= cap or a in gnode:
                bad, horizon, flags = self._check(a, size, start, n, touched)
                if bad is not None:
                    if bad == "fall":
                        bad = None
                        follow = "fall"
                    break
            else:
                off = a & 0xFFF
                flags[off:off + size] = _PAT[size]
            data = rec[4]
            if data == b"\x00\x00":
                zeros += 1
                if zeros > ZERO_RUN_LIMIT:
                    # Code never repeats `add [eax], al`; this is empty RAM
                    # after the code (e.g. behind an `out` that ends the run).
                    # The instruction joins no block: its bytes stay unscanned.
                    self.cfg.pages.unmark(a, size)
                    bad = f"zero fill: more than {ZERO_RUN_LIMIT} consecutive 00 00"
                    break
            else:
                zeros = 0
            append(rec)
            n += 1
            if maybe[data[0]]:
                e = classify_bytes(data)
                if e is not None:
                    sens.append((a, e.name, e.klass.value))
            f = flow_of(rec[2])
            if f is not None:
                follow = self._branch(f, a, size, rec[3])
                a += size
                break
            a += size
        self.insns_scanned += n
        if not insns:
            # Nothing decodable at the start: the node itself is bad.
            cfg.add_bad(start, bad or "undecodable")
            return
        last = insns[-1][0]
        self.new_sites.extend(sens)
        cfg.put_block(start, last + insns[-1][1],
                      Insns(start, b"".join(r[4] for r in insns), bytes(r[1] for r in insns),
                            tuple(insns)), sens)
        if bad is not None:
            if a not in gnode:
                cfg.add_bad(a, bad)
            cfg.link(start, a, "fallthrough", last)
        elif follow == "fall":
            self._work.append((last, a & ADDR_MASK, "fallthrough", None))
        elif follow:
            self._work.extend(follow)

    def _check(self, a: int, size: int, start: int, n: int, touched: set[int]):
        """The rules for an instruction off the fast path, in order.  Marks it in
        the page map when it may join the block.  Returns (verdict, horizon,
        flags): verdict None (it joins), "fall" (the block ends before it, at
        code already scanned or at the size cap) or a bad-block reason."""
        pm = self.cfg.pages
        if a != start and (a in self.cfg.graph._node or pm.state(a)):
            return "fall", a, None
        if n >= self.max_block_insns:
            return "fall", a, None
        if a + size > ADDR_MASK + 1:
            return "truncated: runs past 4 GiB", a, None
        base = a & PAGE_MASK
        rec = pm.pages.get(base)
        if rec is None:
            rec = pm.record(base)
            touched.add(base)
        off = a & 0xFFF
        if off + size <= PAGE:
            flags = rec.flags
            if flags.count(UNSCANNED, off, off + size) != size:
                return "overlap: bytes of an instruction already scanned", a, None
            flags[off:off + size] = _PAT[size]
        else:
            if not pm.is_free(a, size):
                return "overlap: bytes of an instruction already scanned", a, None
            pm.mark(a, size)
            touched.add((a + size - 1) & PAGE_MASK)
        # Where the fast path must stop next: the first scanned byte at or
        # after the next instruction, or the end of its page.
        nxt = a + size
        rec = pm.pages.get(nxt & PAGE_MASK)
        if rec is None:
            return None, nxt, None
        flags = rec.flags
        off = nxt & 0xFFF
        i = flags.find(START, off)
        j = flags.find(CONT, off, i if i >= 0 else PAGE)
        if j >= 0:
            i = j
        return None, (nxt & PAGE_MASK) + (i if i >= 0 else PAGE), flags

    def _defer(self, item: tuple) -> None:
        """Leave a branch's target to a later walk (`walk_bound`): the item waits
        in `cfg.deferred`, its target joins the branch-target index (the patch
        policy must not cover it meanwhile)."""
        site, target = item[0], item[1]
        self.cfg.defer(item)
        self._deferred_from.setdefault(site & PAGE_MASK, set()).add(target)

    def _purge_deferred(self, spans) -> None:
        """Forget the deferred items whose branch lies in one of `spans` ([lo,
        hi): dropped blocks), as the drop forgets those blocks' edges."""
        if not self.cfg.deferred:
            return
        deferred = self.cfg.deferred
        for lo, hi in spans:
            for page in range(lo & PAGE_MASK, hi, PAGE):
                targets = self._deferred_from.get(page)
                if not targets:
                    continue
                for t in list(targets):
                    self.cfg.undefer(t, lo, hi)
                    if not any(it[0] & PAGE_MASK == page for it in deferred.get(t, ())):
                        targets.discard(t)
                if not targets:
                    del self._deferred_from[page]

    def _branch(self, f: str, a: int, size: int, op: str) -> list:
        """Successor work items of a control-flow instruction at `a`."""
        nxt = (a + size) & ADDR_MASK
        if f == "stop":
            return []
        if f == "jcc":
            return [(a, _int(op) & ADDR_MASK, "cond-jump", None), (a, nxt, "fallthrough", None)]
        if f in ("ljmp", "lcall"):
            m = _FAR_IMM.match(op)
            kind = "jump" if f == "ljmp" else "call"
            if m:
                items = [(a, _int(m.group(2)) & ADDR_MASK, kind,
                          {"far": True, "selector": _int(m.group(1))})]
                if self.defer_far and items[0][1] not in self.cfg.graph:
                    self._defer(items.pop())     # see the top: scanned when it runs
            else:
                items = [(a, None, "unresolved", None)]
            if f == "lcall":
                items.append((a, nxt, "return", None))
            return items
        # jmp / call
        kind = "jump" if f == "jmp" else "call"
        if op.startswith("0x") or op.isdigit():
            items = [(a, _int(op) & ADDR_MASK, kind, None)]
        else:
            items = [self._through_memory(a, op)]
        if f == "call":
            items.append((a, nxt, "return", None))
        return items

    def _through_memory(self, a: int, op: str) -> tuple:
        """`jmp/call dword ptr [disp32]`: follow the pointer when it can be read."""
        m = _ABS_MEM.match(op)
        if m:
            ptr = _int(m.group(1))
            raw = self.dec.read(ptr, 4)
            if len(raw) == 4:
                target = struct.unpack("<I", raw)[0]
                if target:
                    return (a, target, "indirect", {"via": ptr})
        return (a, None, "unresolved", None)


ENGINES = ("auto", "c", "python")


def _engine(name: str):
    """("c", NativeWalk) or ("python", None).  "auto" takes the C walk when it
    is built and fits the installed capstone; "c" insists on it."""
    if name not in ENGINES:
        raise ValueError(f"scanner engine {name!r}: one of {', '.join(ENGINES)}")
    if name == "python":
        return "python", None
    if name == "auto" and not native.available():
        return "python", None
    return "c", native.NativeWalk()


@contextlib.contextmanager
def _no_gc():
    """The scan allocates millions of small tuples that all stay alive; the
    cyclic GC would walk them again and again (measured: half the scan time)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


# Page-map bytes of an instruction of n bytes: START, then CONT for the rest.
_PAT = [bytes([START]) + bytes([CONT]) * (n - 1) if n else b"" for n in range(17)]


def idt_gates(read_mem: ReadMem, idt_base: int, idt_limit: int) -> list[tuple[int, int]]:
    """(vector, handler offset) of every present 16/32-bit interrupt or trap gate.
    Task gates carry no offset and are skipped; so are entries that cannot be read."""
    out = []
    count = min((idt_limit + 1) // 8, 256)
    raw = read_mem(idt_base, count * 8) or b""
    for vec in range(count):
        ent = bytes(raw[vec * 8:vec * 8 + 8])
        if len(ent) < 8:
            break
        lo, _sel, _zero, flags, hi = struct.unpack("<HHBBH", ent)
        if not flags & 0x80:
            continue
        if flags & 0x0F not in (0x6, 0x7, 0xE, 0xF):
            continue
        out.append((vec, lo | (hi << 16)))
    return out
