"""Bounded walks (Scanner(walk_bound=N), scanner/scan.py): a lazy scan decodes
about N instructions, leaves the branches past that *deferred* (no edge, no
`unresolved` link, the target in the branch-target index), and links them when
a later walk reaches their target; a drop of a deferred branch's block forgets
it.  Both walks (Python and C) do the same."""
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scanhelp import BASE, PROGRAM, Mem, asm, random_program
from test_engines import snapshot

from scanner.cfg import UNRESOLVED
from scanner.scan import Scanner

ENGINES = ("python", "c")

# main calls f1..f4 (each a block of its own), then jumps to tail; f4 holds a pushfd.
CALLS = """
main: call f1
 call f2
 call f3
 call f4
 jmp tail
f1: nop
 ret
f2: nop
 nop
 ret
f3: jz f1
 ret
f4: pushfd
 popfd
 ret
tail: hlt
 jmp main
"""


def edges(cfg) -> set:
    """(src, dst, kinds): which of two kinds joining a pair is `kind` and which
    `also` is the order the walk met them in."""
    return {(u, v, frozenset((d["kind"], d.get("also")))) for u, v, d in cfg.graph.edges(data=True)}


def resolve_all(sc: Scanner) -> int:
    """Scan every deferred target until none is left (what the block check does
    as the code runs); returns the number of scans."""
    n = 0
    while sc.cfg.deferred:
        sc.scan_from(min(sc.cfg.deferred))
        n += 1
        assert n < 10_000
    return n


@pytest.mark.parametrize("engine", ENGINES)
def test_a_bounded_walk_defers_what_it_did_not_decode(engine):
    mem = Mem(asm(CALLS), size=0x100)
    sc = Scanner(mem.read, engine=engine, walk_bound=1)
    cfg = sc.scan_from(BASE)
    # The first block (one `call`) used the bound; its return is a fall-through
    # kind "return" (a target kind): deferred too, as is the callee.
    assert cfg.instruction_count() == 1
    assert sorted(cfg.deferred) == [BASE + 5, BASE + 0x16]     # main's 2nd call, f1
    assert cfg.unresolved_sites() == [] and cfg.pending == []
    # The policy sees the deferred targets as branch targets already.
    assert cfg.branch_targets_in(BASE, BASE + 0x100) == [BASE, BASE + 5, BASE + 0x16]
    assert sc.new_unresolved == []


@pytest.mark.parametrize("engine", ENGINES)
def test_deferred_branches_link_when_their_target_is_scanned(engine):
    mem = Mem(asm(CALLS), size=0x100)
    full = Scanner(mem.read, engine=engine).scan_from(BASE)
    sc = Scanner(mem.read, engine=engine, walk_bound=1)
    sc.scan_from(BASE)
    scans = resolve_all(sc)
    assert scans > 1
    cfg = sc.cfg
    assert edges(cfg) == edges(full)
    assert {n: (d["kind"], d["start"], d["end"]) for n, d in cfg.graph.nodes(data=True) if n != UNRESOLVED} == \
        {n: (d["kind"], d["start"], d["end"]) for n, d in full.graph.nodes(data=True) if n != UNRESOLVED}
    assert cfg.branch_targets_in(0, 1 << 32) == full.branch_targets_in(0, 1 << 32)
    assert cfg.deferred == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_walk_that_reaches_a_deferred_target_another_way_links_it(engine):
    # f3's `jz f1` is deferred from one walk; a walk from f1 itself reaches it.
    mem = Mem(asm(CALLS), size=0x100)
    sc = Scanner(mem.read, engine=engine, walk_bound=1)
    f3 = BASE + 0x1b
    f1 = BASE + 0x16
    sc.scan_from(f3)
    assert f1 in sc.cfg.deferred
    sc.scan_from(f1)
    assert f1 not in sc.cfg.deferred
    assert sc.cfg.graph._succ[f3][f1]["kind"] == "cond-jump"


@pytest.mark.parametrize("engine", ENGINES)
def test_dropping_the_branch_forgets_the_deferred_item(engine):
    mem = Mem(asm(CALLS), size=0x100)
    sc = Scanner(mem.read, engine=engine, walk_bound=1)
    sc.scan_from(BASE)
    f1 = BASE + 0x16
    assert f1 in sc.cfg.deferred
    sc.invalidate_nodes({BASE}, [(BASE, BASE + 5)])          # main's first block (its call)
    assert f1 not in sc.cfg.deferred
    assert f1 not in sc.cfg.branch_targets_in(BASE, BASE + 0x100)
    # ... and invalidate_page forgets them alike
    sc2 = Scanner(mem.read, engine=engine, walk_bound=1)
    sc2.scan_from(BASE)
    sc2.invalidate_page(BASE)
    assert sc2.cfg.deferred == {}
    assert sc2.cfg.branch_targets_in(0, 1 << 32) == [BASE]     # the entry stays one


@pytest.mark.parametrize("engine", ENGINES)
def test_fallthroughs_are_never_deferred(engine):
    # A block cut at max_block_insns falls through without a branch: a
    # translated block may run on over that boundary unchecked, so the walk
    # must decode what follows even past its bound.
    mem = Mem(asm("nop\n" * 8 + "ret"), size=0x20)
    sc = Scanner(mem.read, engine=engine, walk_bound=1, max_block_insns=2)
    cfg = sc.scan_from(BASE)
    assert cfg.instruction_count() == 9 and cfg.deferred == {}


def test_an_unbounded_walk_defers_nothing():
    mem = Mem(asm(PROGRAM.format(ptr=BASE + 0x100)), size=0x200)
    sc = Scanner(mem.read)
    sc.scan_from(BASE)
    assert sc.cfg.deferred == {}


def test_new_unresolved_lists_the_walks_new_unresolved_branches():
    mem = Mem(asm("jmp eax\n l: call ebx\n ret"), size=0x20)
    for engine in ENGINES:
        sc = Scanner(mem.read, engine=engine)
        sc.scan_from(BASE)
        assert sc.new_unresolved == [BASE]
        sc.scan_from(BASE + 2)
        assert sc.new_unresolved == [BASE + 2]
        sc.scan_from(BASE)                           # nothing new
        assert sc.new_unresolved == []


def both_bounded(read, calls, bound):
    out = []
    for engine in ENGINES:
        sc = Scanner(read, engine=engine, walk_bound=bound)
        for call, arg in calls:
            getattr(sc, call)(*arg)
        snap = snapshot(sc)
        snap["deferred"] = {t: sorted(v, key=repr) for t, v in sc.cfg.deferred.items()}
        out.append(snap)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 12))
def test_both_walks_bound_alike_and_resolve_to_the_full_cfg(seed, bound):
    rnd = random.Random(seed)
    code = random_program(rnd)
    mem = Mem(code, size=len(code) + 16)
    start = BASE + rnd.randrange(len(code))
    py, c = both_bounded(mem.read, [("scan", ([BASE],)), ("scan_from", (start,))], bound)
    assert c == py
    # Scanning every deferred target gives the unbounded walk's edges and
    # target index when the code holds no overlapping decodings (which depend
    # on the order bytes are first reached, bounded or not).
    full = Scanner(mem.read)
    full.scan([BASE])
    full.scan_from(start)
    sc = Scanner(mem.read, walk_bound=bound)
    sc.scan([BASE])
    sc.scan_from(start)
    resolve_all(sc)
    if not any(r.startswith("overlap") for _n, r in full.cfg.bad_blocks() + sc.cfg.bad_blocks()):
        assert edges(sc.cfg) == edges(full.cfg)
        assert sc.cfg.branch_targets_in(0, 1 << 32) == full.cfg.branch_targets_in(0, 1 << 32)


# A far jump to BASE + 0x20 (`.byte 0xea`: Keystone refuses far jumps to
# labels), and what lies there.
FAR = bytes([0xEA]) + (BASE + 0x20).to_bytes(4, "little") + (0x18).to_bytes(2, "little")
FAR_TARGET = asm("pushfd\n popfd\n ret", BASE + 0x20)


@pytest.mark.parametrize("engine", ENGINES)
def test_defer_far_leaves_far_targets_to_when_they_run(engine):
    """With `defer_far` (bt: the segment a far jump lands in is known when it
    runs; a 16-bit one must never be decoded as 32-bit) the target is
    deferred, even by an unbounded walk, and is a branch target already;
    scanning it (the block check, as the code runs) links the far edge."""
    mem = Mem(FAR + bytes(0x20 - len(FAR)) + FAR_TARGET, size=0x100)
    eager = Scanner(mem.read, engine=engine).scan_from(BASE)
    assert eager.instruction_count() == 4
    sc = Scanner(mem.read, engine=engine, defer_far=True)
    cfg = sc.scan_from(BASE)
    assert cfg.instruction_count() == 1
    assert sorted(cfg.deferred) == [BASE + 0x20]
    assert cfg.branch_targets_in(BASE + 1, BASE + 0x100) == [BASE + 0x20]
    assert cfg.unresolved_sites() == []
    sc.scan_from(BASE + 0x20)
    assert not cfg.deferred and cfg.instruction_count() == 4
    assert [d.get("far") for _, _, d in cfg.graph.edges(data=True) if d["kind"] == "jump"] == [True]
