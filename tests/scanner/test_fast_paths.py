"""The scanner's speed machinery gives the same answers as the slow definitions:
the branch-target index, the decode cache, and page invalidation."""
import random

from hypothesis import given, settings, strategies as st
from scanhelp import BASE, Mem, asm

from bt.x86 import PAGE
from scanner.cfg import CFG, TARGET_KINDS, UNRESOLVED
from scanner.decode import Decoder
from scanner.scan import Scanner
from scanner.serialize import load_json, save_json


def _targets_by_walk(cfg: CFG, lo: int, hi: int) -> list[int]:
    """branch_targets_in as first written: a walk over every node's in-edges."""
    out = {a for a in cfg.entries if lo <= a < hi}
    for n in cfg.graph.nodes:
        if n == UNRESOLVED or not lo <= n < hi:
            continue
        if any(d["kind"] in TARGET_KINDS or d.get("also") in TARGET_KINDS
               for _, _, d in cfg.graph.in_edges(n, data=True)):
            out.add(n)
    return sorted(out)


PROGRAM = """
start: test eax, eax
 jz l2
 call f
 cmp ebx, 3
 jne start
 jmp l3
l2: inc ecx
 jmp l3
f: push ebp
 mov ebp, esp
 pop ebp
 ret
l3: hlt
 jmp l3
"""


def _mem():
    return Mem(asm(PROGRAM), size=2 * PAGE)


def test_branch_targets_index_matches_walk():
    mem = _mem()
    sc = Scanner(mem.read)
    cfg = sc.scan([BASE])
    for lo, hi in [(BASE, BASE + 0x40), (BASE + 1, BASE + 9), (0, 1 << 32), (BASE + 5, BASE + 6)]:
        assert cfg.branch_targets_in(lo, hi) == _targets_by_walk(cfg, lo, hi)
    assert cfg.branch_targets_in(BASE, BASE + 0x40)        # jump targets exist
    # A later scan adds targets; the index follows.
    sc.scan_from(BASE + 3)
    assert cfg.branch_targets_in(0, 1 << 32) == _targets_by_walk(cfg, 0, 1 << 32)


def test_branch_targets_after_invalidate_merge_and_load(tmp_path):
    mem = _mem()
    sc = Scanner(mem.read)
    cfg = sc.scan([BASE])
    sc.invalidate_page(BASE)
    assert cfg.branch_targets_in(0, 1 << 32) == _targets_by_walk(cfg, 0, 1 << 32)
    assert cfg.branch_targets_in(0, 1 << 32) == [BASE]      # only the entry is left
    other = Scanner(mem.read).scan([BASE])
    cfg.merge(other)
    assert cfg.branch_targets_in(0, 1 << 32) == _targets_by_walk(cfg, 0, 1 << 32)
    p = tmp_path / "cfg.json"
    save_json(other, str(p))
    loaded = load_json(str(p))
    assert loaded.branch_targets_in(0, 1 << 32) == _targets_by_walk(other, 0, 1 << 32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("add remove query".split()), st.integers(0, 40),
                          st.integers(0, 12)), max_size=200),
       st.integers(1, 8))
def test_branch_target_index_under_churn(ops, overflow):
    """The index answers as sorted(set) of the live targets whatever the mix of
    additions, removals (a CSAM invalidation), re-additions and queries, through
    its overflow merges and its rebuilds (a tiny TARGET_OVERFLOW runs both often)."""
    import scanner.cfg as cfgmod
    saved, cfgmod.TARGET_OVERFLOW = cfgmod.TARGET_OVERFLOW, overflow
    try:
        _churn(ops)
    finally:
        cfgmod.TARGET_OVERFLOW = saved


def _churn(ops) -> None:
    cfg = CFG()
    live: set[int] = set()
    for op, a, n in ops:
        a += BASE
        if op == "add":
            cfg.put_block(a, a + 1, [], ())
            cfg.link(a, a, "jump", a)   # a self-loop makes `a` a target
            live.add(a)
        elif op == "remove" and a in cfg.graph._node:
            cfg.remove_nodes([a])
            live.discard(a)
        lo, hi = BASE + a % 41, BASE + a % 41 + n
        assert cfg.branch_targets_in(lo, hi) == sorted(x for x in live if lo <= x < hi)
    assert cfg.branch_targets_in(0, 1 << 32) == sorted(live)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.lists(st.integers(0, 299), min_size=1, max_size=6))
def test_index_and_cache_on_random_bytes(data, starts):
    mem = Mem(data, size=len(data))
    sc = Scanner(mem.read, chunk=64)
    cfg = sc.scan([BASE + s % len(data) for s in starts])
    assert cfg.branch_targets_in(0, 1 << 32) == _targets_by_walk(cfg, 0, 1 << 32)
    # Every cached instruction is what decoding alone at its address gives.
    for a, size, mnem, op, raw in sc.dec.cache.values():
        assert sc.dec.alone(a) == (size, mnem, op)
        assert raw == mem.read(a, size)


def test_decoder_cache_matches_alone_and_invalidates():
    rng = random.Random(7)
    code = b"\x90" * 64 + asm(PROGRAM) + bytes(rng.randrange(256) for _ in range(3000))
    mem = Mem(code, base=BASE - 64)
    dec = Decoder(mem.read, chunk=256)
    rec = dec.at(BASE)
    assert rec[0] == BASE and dec.alone(BASE) == rec[1:4]
    assert len(dec.cache) > 10 and dec.calls == 1
    # A sweep below an earlier one stops (15 bytes past) where that one began.
    before = len(dec.cache)
    assert dec.at(BASE - 64)[2] == "nop"
    assert dec.calls == 2 and dec.starts == [BASE - 64, BASE]
    assert len(dec.cache) - before == 64          # the nops, nothing decoded twice
    for a, size, mnem, op, raw in dec.cache.values():
        assert dec.alone(a) == (size, mnem, op) and raw == mem.read(a, size)
    dec.invalidate(BASE, BASE + 16)
    assert not [a for a in dec.cache if BASE - 15 < a < BASE + 16]
    assert BASE not in dec.starts


def test_rewritten_page_rescans_with_new_bytes():
    code = asm("start: nop\n nop\n ret")
    mem = Mem(code, size=PAGE)
    sc = Scanner(mem.read)
    cfg = sc.scan([BASE])
    assert [i[2] for i in cfg.block(BASE).insns] == ["nop", "nop", "ret"]
    mem.write(BASE, b"\xfa\xfb\xc3")                      # cli; sti; ret
    cfg.pages.mark_dirty(BASE)
    sc.rescan_dirty()
    assert [i[2] for i in cfg.block(BASE).insns] == ["cli", "sti", "ret"]


def _nodes_on_page_by_walk(sc: Scanner, base: int) -> set[int]:
    """invalidate_page's node set as first written: a walk over every node."""
    hit = set()
    for n, d in sc.cfg.graph.nodes(data=True):
        if d["kind"] == "block" and d["start"] < base + PAGE and d["end"] > base:
            hit.add(n)
        elif d["kind"] == "bad" and base <= n < base + PAGE:
            hit.add(n)
    return hit


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=3 * PAGE), st.lists(st.integers(0, 3 * PAGE), min_size=1, max_size=8))
def test_nodes_on_page_matches_the_walk_over_all_nodes(data, starts):
    # Random bytes across three pages (instructions straddle page boundaries).
    mem = Mem(data, base=BASE, size=len(data))
    sc = Scanner(mem.read)
    sc.scan([BASE + s % len(data) for s in starts])
    for page in range(BASE - PAGE, BASE + 4 * PAGE, PAGE):
        assert sc.nodes_on_page(page) == _nodes_on_page_by_walk(sc, page)


def test_invalidating_a_page_drops_a_block_that_straddles_into_it():
    # nop; nop; jmp back to the nops - the jmp's last three bytes are the
    # only scanned bytes on the second page (no instruction starts there).
    code = bytearray(b"\x90" * (2 * PAGE))
    code[PAGE - 2:PAGE + 3] = b"\xe9" + (-7 & 0xFFFFFFFF).to_bytes(4, "little")   # jmp rel32
    mem = Mem(bytes(code))
    sc = Scanner(mem.read)
    sc.scan([BASE + PAGE - 4])
    assert sc.cfg.blocks() == [BASE + PAGE - 4]
    assert sc.invalidate_page(BASE + PAGE) == [BASE + PAGE - 4]
    assert sc.cfg.blocks() == [] and sc.cfg.block_of(BASE + PAGE - 4) is None
    assert not any(any(m) for m in sc.cfg.marks.pages.values())
    assert sc.cfg.pages.state(BASE + PAGE - 4) == 0


def _marks_from_blocks(cfg: CFG) -> dict[int, int]:
    """The page map as the remaining blocks define it: address -> START/CONT."""
    out = {}
    for b in cfg.blocks():
        for a, size in zip(cfg.graph.nodes[b]["insns"].addrs(), cfg.graph.nodes[b]["insns"].sizes):
            out[a] = 1
            for i in range(1, size):
                out[a + i] = 2
    return out


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=3 * PAGE), st.lists(st.integers(0, 3 * PAGE), min_size=1, max_size=8),
       st.integers(0, 2))
def test_invalidating_a_page_leaves_the_map_and_graph_the_remaining_blocks_define(data, starts, which):
    """invalidate_page clears the page wholesale and unmarks only blocks running
    over its edges, and edits the graph's dicts directly (scanner/scan.py,
    scanner/cfg.py remove_nodes): the page map, node marks and edges left must be
    exactly those of the blocks that remain."""
    mem = Mem(data, base=BASE, size=len(data))
    sc = Scanner(mem.read)
    sc.scan([BASE + s % len(data) for s in starts])
    page = BASE + which * PAGE
    gone = sc.invalidate_page(page)
    cfg = sc.cfg
    assert not set(gone) & set(cfg.graph.nodes)
    want = _marks_from_blocks(cfg)
    for base, rec in cfg.pages.pages.items():
        for off in range(PAGE):
            assert rec.flags[off] == want.get(base + off, 0), hex(base + off)
    marked = {base + i for base, m in cfg.marks.pages.items() for i in range(PAGE) if m[i]}
    assert marked == {n for n in cfg.graph.nodes if n != UNRESOLVED}
    g = cfg.graph
    for u in g._succ:
        for v in g._succ[u]:
            assert v in g._node and g._pred[v][u] is g._succ[u][v]
    for v in g._pred:
        for u in g._pred[v]:
            assert u in g._node and g._succ[u][v] is g._pred[v][u]
    # Branch targets left are exactly those with an incoming branch (or entries).
    assert cfg.branch_targets_in(0, 1 << 32) == _targets_by_walk(cfg, 0, 1 << 32)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=3 * PAGE),
       st.lists(st.tuples(st.sampled_from("scan invalidate unmark drop".split()),
                          st.integers(0, 3 * PAGE), st.integers(1, 2 * PAGE)),
                min_size=1, max_size=12),
       st.sampled_from(["auto", "python"]))
def test_code_pages_follows_scans_and_invalidations(data, ops, engine):
    """`code_pages` (incremental) answers as the look at every record, through
    scans into emptied records (the walk writes flags without telling the map),
    invalidations, unmarks across pages and dropped records, with either walk."""
    mem = Mem(data, base=BASE, size=len(data))
    sc = Scanner(mem.read, engine=engine)
    pm = sc.cfg.pages
    before = set()
    for op, off, n in ops:
        a = BASE + off % len(data)
        if op == "scan":
            sc.scan_from(a)
        elif op == "invalidate":
            sc.invalidate_page(a)
        elif op == "unmark":
            pm.unmark(a, n)
        else:
            sc.invalidate_page(a)
            pm.drop(a & ~(PAGE - 1))
        # `refresh` names the pages that became code pages since its last call
        now = set(pm.code_pages_reference())
        assert pm.refresh() == now - before
        before = now
        assert pm.code_pages() == pm.code_pages_reference()


def test_refresh_counts_a_page_dropped_and_filled_again_as_new():
    # bt's lazy scan publishes the pages `refresh` names after a walk; a page
    # whose parked scan was forgotten and which the walk scanned again must be
    # among them (the block check would refuse its starts otherwise).
    code = asm("nop\n ret")
    for engine in ("python", "c"):
        sc = Scanner(Mem(code).read, engine=engine)
        pm = sc.cfg.pages
        sc.scan_from(BASE)
        assert pm.refresh() == {BASE}
        sc.invalidate_page(BASE)
        pm.drop(BASE)
        sc.scan_from(BASE)
        assert pm.refresh() == {BASE} and pm.known_code() == {BASE}
        sc.invalidate_page(BASE)                 # cleared, its record kept
        sc.scan_from(BASE)
        assert pm.refresh() == {BASE}
