"""CFG.block_of and CFG.block_containing (a backward search through the node
marks and the page map) answer what their definitions say, read off the graph
by brute force, for every byte of the scanned range and a margin around it:

  * block_containing(a): the block node with start <= a < end;
  * block_of(a): the block whose rows hold an instruction starting at a;

and cfg.marks is the graph's node set: BLOCK_MARK at block nodes, BAD_MARK at
bad nodes, 0 everywhere else.  Through later scans that split blocks, page
invalidation and rescans, merge, save/load and reindex, with both engines."""
import os
import tempfile

import pytest
from hypothesis import assume, given, settings, strategies as st
from scanhelp import BASE, Mem, asm

from bt.x86 import PAGE
from scanner.cfg import BAD_MARK, BLOCK_MARK, CFG, UNRESOLVED
from scanner.scan import ZERO_RUN_LIMIT, Scanner
from scanner.serialize import load_json, save_json

MARGIN = 24
ENGINES = ["c", "python"]


def by_walk(cfg: CFG):
    """addr -> blocks with a byte there, addr -> blocks with an instruction
    starting there, addr -> expected mark: a walk over every node."""
    holding, starting, marks = {}, {}, {}
    for n, d in cfg.graph.nodes(data=True):
        if n == UNRESOLVED:
            continue
        if d["kind"] == "block":
            marks[n] = BLOCK_MARK
            for a in range(d["start"], d["end"]):
                holding.setdefault(a, []).append(n)
            for row in d["insns"]:
                starting.setdefault(row[0], []).append(n)
        else:
            marks[n] = BAD_MARK
    return holding, starting, marks


def check(cfg: CFG, lo: int, hi: int) -> None:
    holding, starting, marks = by_walk(cfg)
    for a in range(max(0, lo - MARGIN), min(1 << 32, hi + MARGIN)):
        h, s = holding.get(a, []), starting.get(a, [])
        assert len(h) <= 1 and len(s) <= 1, f"{a:#x}: blocks {h} share a byte"
        assert cfg.block_containing(a) == (h[0] if h else None), hex(a)
        assert cfg.block_of(a) == (s[0] if s else None), hex(a)
        assert cfg.marks.get(a) == marks.get(a, 0), hex(a)
    # Nothing marked anywhere (outside the range too) that is not a node.
    for base, m in cfg.marks.pages.items():
        for off in range(PAGE):
            if m[off]:
                assert marks.get(base + off) == m[off], hex(base + off)


def answers(cfg: CFG, lo: int, hi: int) -> list:
    return [(cfg.block_containing(a), cfg.block_of(a), cfg.marks.get(a))
            for a in range(max(0, lo - MARGIN), min(1 << 32, hi + MARGIN))]


# --- random bytes ---------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.integers(0, 300),
       st.lists(st.integers(0, 299), min_size=1, max_size=6), st.sampled_from(ENGINES))
def test_random_bytes_scans_splits_and_invalidation(data, shift, starts, engine):
    # A zero run long enough to end a block as "zero fill" is left to
    # test_rescan_after_invalidating_a_zero_fill_stop (a scanner bug).
    assume(bytes(2 * ZERO_RUN_LIMIT + 2) not in data)
    # The bytes sit across a page boundary (shift bytes on the first page).
    base = BASE + PAGE - shift
    lo, hi = base, base + len(data)
    mem = Mem(data, base=base)
    sc = Scanner(mem.read, chunk=64, engine=engine)
    cfg = sc.scan([base + s % len(data) for s in starts[:2]])
    check(cfg, lo, hi)
    for s in starts[2:]:                       # later scans add and split blocks
        sc.scan_from(base + s % len(data))
    check(cfg, lo, hi)
    sc.invalidate_page(base + starts[0] % len(data))
    check(cfg, lo, hi)
    sc.scan_from(base + starts[-1] % len(data))
    check(cfg, lo, hi)
    again = CFG()
    again.graph = cfg.graph.copy()
    again.pages, again.entries = cfg.pages, cfg.entries
    again.reindex()                            # marks built from the graph alone
    assert answers(again, lo, hi) == answers(cfg, lo, hi)


@pytest.mark.parametrize("engine", ENGINES)
def test_rescan_after_invalidating_a_zero_fill_stop(engine):
    # Nine `add [eax], al` (00 00): the block ends before the ninth, at a bad
    # "zero fill" node.  Invalidating the page drops both nodes; scanning the
    # same bytes again must give the same block and bad node.
    mem = Mem(bytes(2 * ZERO_RUN_LIMIT + 2), size=PAGE)
    sc = Scanner(mem.read, engine=engine)
    cfg = sc.scan([BASE])
    assert cfg.blocks() == [BASE] and [a for a, _ in cfg.bad_blocks()] == [BASE + 16]
    check(cfg, BASE, BASE + 18)
    sc.invalidate_page(BASE)
    check(cfg, BASE, BASE + 18)
    sc.scan_from(BASE)
    assert cfg.blocks() == [BASE] and [a for a, _ in cfg.bad_blocks()] == [BASE + 16]
    check(cfg, BASE, BASE + 18)


def agree(one: CFG, two: CFG) -> bool:
    """No byte scanned by both as different parts of instructions."""
    for base, r in two.pages.pages.items():
        mine = one.pages.pages.get(base)
        if mine is not None and any(x and y and x != y for x, y in zip(mine.flags, r.flags)):
            return False
    return True


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.integers(0, 300),
       st.lists(st.integers(0, 299), min_size=1, max_size=4),
       st.lists(st.integers(0, 299), min_size=1, max_size=4), st.sampled_from(ENGINES))
def test_random_bytes_merge_and_load(data, shift, starts1, starts2, engine):
    # Merged scans whose instructions agree (for ones that do not, see
    # test_merging_scans_whose_instructions_overlap), then saved and loaded.
    base = BASE + PAGE - shift
    lo, hi = base, base + len(data)
    mem = Mem(data, base=base)
    one = Scanner(mem.read, engine=engine).scan([base + s % len(data) for s in starts1])
    two = Scanner(mem.read, engine=engine).scan([base + s % len(data) for s in starts2])
    assume(agree(one, two))
    one.merge(two)
    check(one, lo, hi)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cfg.json")
        save_json(one, path)
        loaded = load_json(path)
    check(loaded, lo, hi)
    assert answers(loaded, lo, hi) == answers(one, lo, hi)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("at, code", [
    (0, b"\x90" * (PAGE + 5) + b"\xc3"),                  # from address 0 into the next page
    (0xFFFFF000 - 3, b"\x90" * (PAGE + 2) + b"\xc3"),      # up to the last byte of memory
], ids=["first-page", "last-page"])
def test_blocks_at_the_ends_of_the_address_space(engine, at, code):
    mem = Mem(code, base=at)
    cfg = Scanner(mem.read, engine=engine).scan([at])
    assert cfg.blocks() == [at] and cfg.graph.nodes[at]["end"] == at + len(code)
    check(cfg, at, at + len(code))
    assert cfg.block_containing(at + len(code) - 1) == at


# --- a block across a page boundary ----------------------------------------------

PROGRAM = """
start: nop
 nop
 mov eax, 0x11223344
 add eax, 2
 mid: mov ebx, dword ptr [0x10000]
 inc ecx
 jz start
 jmp fin
fin: hlt
 jmp fin
"""


def straddling(engine: str, at: int = BASE + PAGE - 6):
    code = asm(PROGRAM, at)
    mem = Mem(bytes(at - BASE) + code, size=2 * PAGE)
    sc = Scanner(mem.read, engine=engine)
    sc.scan([at])
    return sc, mem, code, at


@pytest.mark.parametrize("engine", ENGINES)
def test_block_straddling_a_page_boundary(engine):
    sc, mem, code, at = straddling(engine)
    cfg = sc.cfg
    check(cfg, at, at + len(code))
    # mov eax (5 bytes) runs from the first page into the second, and the
    # block's instructions go on there: all of them are the first page's block.
    assert (at + 2, at + 7) == (BASE + PAGE - 4, BASE + PAGE + 1)
    assert cfg.block_containing(BASE + PAGE) == at                # mov eax's last byte
    assert cfg.block_of(BASE + PAGE) is None                      # inside mov eax
    assert cfg.block_of(at + 2) == at                             # mov eax itself
    assert cfg.block_of(BASE + PAGE + 1) == at                    # add, on the second page
    assert cfg.block_containing(BASE + PAGE + 2) == at
    assert cfg.marks.get(BASE + PAGE) == 0 and cfg.marks.get(BASE + PAGE + 1) == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_block_spanning_three_pages(engine):
    # 5000 nops from just below a page end: the middle page holds no block
    # start at all, and the answer is found two pages back.
    at = BASE + PAGE - 3
    code = b"\x90" * 5000 + b"\xc3"
    mem = Mem(bytes(at - BASE) + code)
    cfg = Scanner(mem.read, engine=engine).scan([at])
    assert cfg.blocks() == [at]
    check(cfg, at, at + len(code))
    for a in (BASE + PAGE, BASE + 2 * PAGE - 1, BASE + 2 * PAGE, at + len(code) - 1):
        assert cfg.block_containing(a) == at and cfg.block_of(a) == at
    assert cfg.block_of(at + len(code)) is None


@pytest.mark.parametrize("engine", ENGINES)
def test_block_ending_at_a_page_end_and_one_starting_at_a_page_start(engine):
    # nop x4 ending exactly at a page end, then a block (after a jmp target) from
    # the next page's first byte; and unscanned bytes after the second block.
    at = BASE + PAGE - 6
    first = asm(f"nop\n nop\n nop\n nop\n jmp {BASE + PAGE + 8:#x}", at)   # 4 + 2 bytes
    assert at + len(first) == BASE + PAGE
    second = asm("cli\n sti\n ret", BASE + PAGE + 8)
    mem = Mem(bytes(at - BASE) + first + bytes(8) + second, size=3 * PAGE)
    sc = Scanner(mem.read, engine=engine)
    cfg = sc.scan([at])
    check(cfg, at, BASE + PAGE + 8 + len(second))
    assert cfg.block_containing(BASE + PAGE - 1) == at
    assert cfg.block_containing(BASE + PAGE) is None           # unscanned zero bytes
    sc.scan_from(BASE + PAGE)                                  # now a block starts there
    check(cfg, at, BASE + PAGE + 8 + len(second))
    assert cfg.block_of(BASE + PAGE) == BASE + PAGE


# --- a block split by a later scan -------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_block_split_by_a_later_scan_into_its_middle(engine):
    sc, mem, code, at = straddling(engine)
    cfg = sc.cfg
    first = cfg.block(at)
    mid = [r[0] for r in first.insns if r[2] == "mov" and "ebx" in r[3]][0]
    assert mid > BASE + PAGE                     # the cut is on the second page
    sc.scan_from(mid)
    assert cfg.graph.nodes[at]["end"] == mid and cfg.graph.nodes[mid]["end"] == first.end
    check(cfg, at, at + len(code))
    assert cfg.block_containing(mid - 1) == at and cfg.block_containing(mid) == mid
    assert cfg.block_of(mid) == mid and cfg.block_containing(mid + 1) == mid
    sc.scan_from(at + 1)                         # and again, on the first page
    check(cfg, at, at + len(code))
    assert cfg.block_of(at + 1) == at + 1 and cfg.block_of(at) == at


# --- invalidation --------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_after_invalidating_either_page_and_rescanning(engine):
    for page in (BASE, BASE + PAGE):
        sc, mem, code, at = straddling(engine)
        cfg = sc.cfg
        sc.scan_from(at + 1)
        dropped = sc.invalidate_page(page)
        assert at + 1 in dropped                 # the block across the boundary went
        check(cfg, at, at + len(code))
        assert cfg.block_containing(BASE + PAGE) is None and cfg.block_of(at + 1) is None
        assert cfg.block_of(BASE + PAGE + 1) is None
        for s in dropped:                        # scanned again, as rescan_dirty does
            sc.scan_from(s)
        check(cfg, at, at + len(code))
        assert cfg.block_containing(BASE + PAGE) == at + 1 and cfg.block_of(BASE + PAGE + 1) == at + 1


@pytest.mark.parametrize("engine", ENGINES)
def test_after_rescanning_a_dirty_page(engine):
    sc, mem, code, at = straddling(engine)
    cfg = sc.cfg
    mem.write(at + 1, b"\xfa")                   # nop -> cli, in the first page
    cfg.pages.mark_dirty(at + 1)
    sc.rescan_dirty()
    check(cfg, at, at + len(code))
    assert cfg.block(at).insns[1][2] == "cli"
    assert cfg.block_containing(BASE + PAGE + 1) == at


# --- merge, load, reindex -----------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_after_merging_two_scans(engine):
    sc, mem, code, at = straddling(engine)
    one = sc.cfg
    mid = at + code.index(bytes.fromhex("8b1d"))  # mov ebx, [..]: on the second page
    other = Scanner(mem.read, engine=engine)
    other.scan([mid])
    other.scan_from(at + 1)                       # its own split, on the first page
    two = other.cfg
    one.merge(two)
    check(one, at, at + len(code))
    assert one.block_of(mid) == mid and one.block_of(at + 1) == at + 1
    assert one.block_containing(BASE + PAGE) == at + 1
    # The other way round: a fresh CFG merged with one that holds everything.
    fresh = CFG().merge(one)
    check(fresh, at, at + len(code))
    assert answers(fresh, at, at + len(code)) == answers(one, at, at + len(code))


def test_merging_scans_whose_instructions_overlap():
    # `mov eax, 0x90909090` scanned from its first byte, and the nops inside it
    # scanned from its second byte by another scanner: block BASE+1 starts at
    # BASE+1 with a nop.  (One scanner would make BASE+1 a bad "overlap" node.)
    code = asm("mov eax, 0x90909090\n ret")
    mem = Mem(code, size=PAGE)
    one = Scanner(mem.read).scan([BASE])
    two = Scanner(mem.read).scan([BASE + 1])
    assert two.block_of(BASE + 1) == BASE + 1
    one.merge(two)
    # As one scanner given both entries: the start inside the mov is a bad
    # "overlap" node, and no two blocks share a byte.
    assert one.graph.nodes[BASE + 1]["kind"] == "bad"
    assert one.graph.nodes[BASE + 1]["reason"].startswith("overlap")
    assert one.block_of(BASE + 1) is None and one.block_of(BASE) == BASE
    check(one, BASE, BASE + len(code))


@pytest.mark.parametrize("engine", ENGINES)
def test_after_save_and_load(engine, tmp_path):
    sc, mem, code, at = straddling(engine)
    sc.scan_from(at + 1)
    sc.scan_from(at + code.index(bytes.fromhex("8b1d")))
    sc.scan_from(at + 3)                          # inside mov eax: a bad node
    cfg = sc.cfg
    assert cfg.marks.get(at + 3) == BAD_MARK
    p = tmp_path / "cfg.json"
    save_json(cfg, str(p))
    loaded = load_json(str(p))
    check(loaded, at, at + len(code))
    assert answers(loaded, at, at + len(code)) == answers(cfg, at, at + len(code))
    assert {b: bytes(m) for b, m in loaded.marks.pages.items() if any(m)} == \
        {b: bytes(m) for b, m in cfg.marks.pages.items() if any(m)}


@pytest.mark.parametrize("engine", ENGINES)
def test_after_reindex(engine):
    sc, mem, code, at = straddling(engine)
    sc.scan_from(at + 1)
    sc.scan_from(at + 3)                          # a bad node
    cfg = sc.cfg
    before = answers(cfg, at, at + len(code))
    cfg.reindex()                                 # nothing changed: the same answers
    check(cfg, at, at + len(code))
    assert answers(cfg, at, at + len(code)) == before
    # Edits behind the CFG's back, then reindex: a block and the bad node go,
    # a bad node appears where nothing was.
    cfg.graph.remove_node(at + 1)
    cfg.graph.remove_node(at + 3)
    cfg.graph.add_node(BASE + 2 * PAGE, kind="bad", start=BASE + 2 * PAGE, end=BASE + 2 * PAGE,
                       insns=(), sensitive=(), reason="unmapped")
    cfg.reindex()
    check(cfg, at, BASE + 2 * PAGE + 1)
    assert cfg.marks.get(at + 1) == 0 and cfg.marks.get(at + 3) == 0
    assert cfg.marks.get(BASE + 2 * PAGE) == BAD_MARK
    assert cfg.block_of(at + 1) is None            # its bytes are still marked scanned
