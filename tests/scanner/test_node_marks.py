"""CFG.block_of / block_containing and the node marks behind them give the
answers a walk over every node gives, through splits, invalidation, merge,
load and reindex."""
from hypothesis import given, settings, strategies as st
from scanhelp import BASE, Mem, asm

from scanner.cfg import BAD_MARK, BLOCK_MARK, CFG, UNRESOLVED
from scanner.pages import PAGE
from scanner.scan import Scanner


def containing_by_walk(cfg: CFG, addr: int):
    for n, d in cfg.graph.nodes(data=True):
        if n != UNRESOLVED and d["kind"] == "block" and d["start"] <= addr < d["end"]:
            return n
    return None


def block_of_by_walk(cfg: CFG, addr: int):
    for n, d in cfg.graph.nodes(data=True):
        if n != UNRESOLVED and d["kind"] == "block" and addr in d["insns"].addrs():
            return n
    return None


def check(cfg: CFG, lo: int, hi: int) -> None:
    for a in range(max(0, lo - 20), hi + 20):
        assert cfg.block_containing(a) == containing_by_walk(cfg, a), hex(a)
        assert cfg.block_of(a) == block_of_by_walk(cfg, a), hex(a)
        d = cfg.graph.nodes.get(a) if a in cfg.graph else None
        want = 0 if d is None else BLOCK_MARK if d["kind"] == "block" else BAD_MARK
        assert cfg.marks.get(a) == want, hex(a)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.lists(st.integers(0, 299), min_size=1, max_size=6))
def test_answers_equal_a_walk_on_random_bytes(data, starts):
    mem = Mem(data, size=len(data))
    sc = Scanner(mem.read)
    cfg = sc.scan([BASE + s % len(data) for s in starts[:2]])
    check(cfg, BASE, BASE + len(data))
    for s in starts[2:]:                       # later scans split and add blocks
        sc.scan_from(BASE + s % len(data))
    check(cfg, BASE, BASE + len(data))


PROGRAM = """
start: nop
 nop
 mov eax, 1
 add eax, 2
 jz start
 jmp fin
fin: hlt
 jmp fin
"""


def test_block_across_a_page_boundary_split_and_invalidated():
    base = BASE + PAGE - 6                     # the block's instructions straddle the page end
    code = asm(PROGRAM, base)
    mem = Mem(bytes(PAGE - 6) + code, size=2 * PAGE)
    sc = Scanner(mem.read)
    cfg = sc.scan([base])
    check(cfg, base, base + len(code))
    assert cfg.block_containing(BASE + PAGE + 1) == base     # on the second page, from the first
    sc.scan_from(base + 2)                     # a branch into the middle: split
    assert cfg.block_of(base + 2) == base + 2 and cfg.block_of(base + 1) == base
    check(cfg, base, base + len(code))
    sc.invalidate_page(BASE + PAGE)
    check(cfg, base, base + len(code))
    assert cfg.block_containing(BASE + PAGE + 1) is None


def test_answers_survive_merge_load_and_reindex(tmp_path):
    code = asm(PROGRAM)
    mem = Mem(code, size=PAGE)
    one = Scanner(mem.read).scan([BASE])
    two = Scanner(mem.read).scan([BASE + 1])        # a block starting inside one's first block
    one.merge(two)
    check(one, BASE, BASE + len(code))
    assert one.block_of(BASE + 1) == BASE + 1
    p = tmp_path / "cfg.json"
    one.save_json(str(p))
    loaded = CFG.load_json(str(p))
    check(loaded, BASE, BASE + len(code))
    loaded.graph.remove_node(BASE + 1)             # an edit behind the CFG's back...
    loaded.reindex()                               # ...is what reindex is for
    assert loaded.marks.get(BASE + 1) == 0
    check(loaded, BASE, BASE + len(code))


def test_bad_nodes_are_marked_and_end_blocks_in_both_engines():
    # Bytes overlapping an instruction make a bad node; a later block that runs
    # into that address stops there in both engines (the C walk learns it from
    # the marks, the Python walk from the graph).
    code = asm("mov eax, 0x90909090\n nop\n nop\n ret")
    mem = Mem(code, size=PAGE)
    for engine in ("python", "c"):
        sc = Scanner(mem.read, engine=engine)
        sc.scan([BASE])
        sc.scan_from(BASE + 2)                     # inside the mov: a bad node
        cfg = sc.cfg
        assert cfg.marks.get(BASE + 2) == BAD_MARK
        check(cfg, BASE, BASE + len(code))
