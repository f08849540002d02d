"""Fine-grained invalidation (scanner/drop.py, `Scanner.invalidate_nodes`):
after stores into scanned code, dropping only the blocks they hit (and those
that run on into them) and scanning again leaves a CFG that is true to the new
bytes, never lets a kept block run on into unscanned bytes, and knows every
instruction, branch target and sensitive site a scan from scratch finds."""
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scanhelp import BASE, BRANCHES, PROGRAM_LINES, Mem, asm, random_program
from test_properties import _check

from bt.x86 import PAGE
from scanner.cfg import UNRESOLVED
from scanner.drop import fallthrough_preds, nodes_overlapping, outside
from scanner.flow import FLOW
from scanner.pages import CONT, START
from scanner.scan import Scanner

ENGINES = ["python", "c"]


def _drop_written(sc: Scanner, lo: int, hi: int) -> set[int]:
    nodes = fallthrough_preds(sc.cfg, nodes_overlapping(sc.cfg, lo, hi))
    sc.invalidate_nodes(nodes, [(lo, hi)])
    return nodes


def _sound(cfg, mem) -> None:
    """True to memory (test_properties._check), the page map is exactly the
    blocks' instructions, and a block whose last instruction is no branch falls
    through into a node (else its translated block would run on unchecked)."""
    _check(cfg, mem)
    marks = {}
    for b in cfg.blocks():
        ins = cfg.graph.nodes[b]["insns"]
        for a, size in zip(ins.addrs(), ins.sizes):
            marks[a] = START
            for i in range(1, size):
                marks[a + i] = CONT
        last = ins[-1]
        if FLOW.get(last[2]) is None:
            nxt = last[0] + last[1]
            assert nxt in cfg.graph.succ[b] and cfg.graph.succ[b][nxt]["kind"] == "fallthrough", hex(b)
    flags = {base + i: f for base, rec in cfg.pages.pages.items() for i, f in enumerate(rec.flags) if f}
    assert flags == marks


def _program(rnd: random.Random) -> bytes:
    """random_program without junk bytes: instruction boundaries are the same
    whatever the order a scan takes, so a scan from scratch is comparable."""
    n = rnd.randint(4, 40)
    lines = []
    for i in range(n):
        if rnd.random() < 0.25:
            ins = f"{rnd.choice(BRANCHES)} L{rnd.randrange(n)}"
        else:
            ins = rnd.choice(PROGRAM_LINES).format(imm=rnd.randrange(1 << 32))
        lines.append(f"L{i}: {ins}")
    return asm("\n".join(lines))


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_stores_leave_a_sound_cfg(engine, seed):
    rnd = random.Random(seed)
    mem = Mem(random_program(rnd), size=0x1000)
    sc = Scanner(mem.read, engine=engine)
    entries = [BASE]
    sc.scan(entries)
    for _ in range(rnd.randint(1, 5)):
        a = BASE + rnd.randrange(len(mem.buf) // 4)
        data = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 6)))
        mem.write(a, data)
        _drop_written(sc, a, a + len(data))
        entries.append(a)
        sc.scan(entries)
        _sound(sc.cfg, mem)


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1))
# A jmp retargeted into the middle of a block's instruction (an "overlap" verdict),
# then that block dropped: the target must be walked again (scanner/drop.py).
@example(37502143)
def test_whole_instruction_rewrites_find_what_a_scan_from_scratch_finds(engine, seed):
    rnd = random.Random(seed)
    mem = Mem(_program(rnd), size=0x1000)
    sc = Scanner(mem.read, engine=engine)
    sc.scan([BASE])
    for _ in range(rnd.randint(1, 4)):
        insns = list(sc.cfg.instructions())
        if not insns:
            break
        a, size, _m, _o, _d = rnd.choice(insns)
        # NOPs over one instruction (ftrace's rewrite) or its operand bytes
        # rewritten (a retargeted branch): boundaries outside it stay.
        data = b"\x90" * size if rnd.random() < 0.5 or size == 1 else \
            bytes([mem.buf[a - BASE]]) + bytes(rnd.randrange(256) for _ in range(size - 1))
        mem.write(a, data)
        _drop_written(sc, a, a + size)
        sc.scan([BASE])
        _sound(sc.cfg, mem)
        fresh = Scanner(mem.read, engine=engine).scan([BASE])
        fine = sc.cfg
        # A rewrite that changes an instruction's length can leave a kept
        # block's bytes decoded across a new boundary (an "overlap" bad node
        # where a scan from scratch decodes on): only compare when every
        # instruction of the fresh scan is one of the fine CFG's or lies on
        # bytes it left unscanned.
        mine = {i[0] for i in fine.instructions()}
        theirs = {i[0] for i in fresh.instructions()}
        if any(x not in mine and any(fine.pages.state(x + k) for k in range(size))
               for x, size, *_ in fresh.instructions()):
            continue
        # The zero-fill verdict ("more than 8 consecutive 00 00") counts the run
        # from where the walk entered it, so a walk that came in through the
        # block before a split stops a few `00 00`s earlier than a scan from
        # scratch that entered at the split: both sound, both end at zero fill.
        fills = [n for n, d in fine.graph.nodes(data=True)
                 if d.get("kind") == "bad" and d["reason"].startswith("zero fill")]
        zeros = {x for x in theirs - mine
                 if any(z <= x and mem.read(z, x + 2 - z) == bytes(x + 2 - z) for z in fills)}
        assert theirs - zeros <= mine
        # (A `call [disp32]` whose pointer lies in the rewritten bytes keeps
        # its old target: pointers are not watched, on any page; the block
        # check catches a changed one when it is taken.)
        via = {v for _u, v, d in fresh.graph.edges(data=True) if d["kind"] == "indirect"}
        assert set(fresh._tset) - via <= set(fine._tset)
        assert {s.addr for s in fresh.sensitive_sites()} <= {s.addr for s in fine.sensitive_sites()}
        for u, v, d in fresh.graph.edges(data=True):
            if v == UNRESOLVED:
                assert fine.graph.has_edge(fine.block_of(d["site"]) or u, UNRESOLVED)


def test_a_block_that_falls_into_a_dropped_one_goes_with_it():
    # a: two movs, then b (a call target, so a block of its own) -- a's
    # last instruction is no branch: a store into b drops a too; c, after
    # b's ret, stays.
    code = asm("call b\nret\na: mov eax, 1\nmov edx, 2\nb: nop\nret\nc: call a\nret")
    mem = Mem(code)
    sc = Scanner(mem.read)
    sc.scan([BASE, BASE + code.index(b"\xe8", 1)])
    b = sc.cfg.block_of(BASE + 6 + 10)
    assert b is not None
    dropped = _drop_written(sc, b, b + 1)
    a = BASE + 6
    assert dropped == {a, b}
    assert sc.cfg.block_of(a) is None and sc.cfg.pages.state(a) == 0
    assert sc.cfg.block_of(BASE) == BASE                  # the first call's block stays
    # The calls into a and b are kept blocks' edges: followed again next walk.
    sc.scan([])
    assert sc.cfg.block_of(a) == a and sc.cfg.block_of(b) == b
    assert {a, b} <= set(sc.cfg._tset)


def test_orphans_of_a_dropped_branch_are_not_followed():
    assert outside([(5, 100, "call", None), (20, 200, "jump", None)], [(0, 10)]) == \
        [(20, 200, "jump", None)]
    assert outside([(9, 1, "jump", None), (10, 2, "jump", None)], [(3, 8), (7, 10)]) == \
        [(10, 2, "jump", None)]


def test_a_whole_page_invalidation_drops_the_block_that_falls_into_the_page():
    # A (`mov eax, 1`) ends exactly at the page boundary and falls through into
    # B, the first block of the next page (a call target): dropping that page
    # drops A too, though no byte of A is on it.
    code = bytearray(b"\x90" * (2 * PAGE))
    b = BASE + PAGE
    code[0:6] = b"\xe8" + (b - (BASE + 5)).to_bytes(4, "little") + b"\xc3"   # call B; ret
    code[PAGE - 5:PAGE] = b"\xb8\x01\x00\x00\x00"                             # A: mov eax, 1
    code[PAGE:PAGE + 2] = b"\x90\xc3"                                         # B: nop; ret
    mem = Mem(bytes(code))
    sc = Scanner(mem.read)
    a = b - 5
    sc.scan([BASE, a])
    assert sc.cfg.block_of(a) == a and sc.cfg.block_of(b) == b
    assert sorted(sc.invalidate_page(b)) == [a, b]
    assert sc.cfg.block_of(a) is None and sc.cfg.pages.state(a) == 0
    assert sc.cfg.block_of(BASE) == BASE


def _overlapping_by_byte(cfg, lo, hi) -> set[int]:
    """The definition `nodes_overlapping` skips through the page flags for: a
    look at every byte (bad nodes as it finds them)."""
    out = set()
    node = cfg.graph._node
    for a in range(lo, hi):
        if cfg.pages.state(a):
            b = cfg.block_containing(a)
            if b is not None:
                out.add(b)
    out |= {n for n, d in node.items() if n != UNRESOLVED and d["kind"] == "bad" and lo <= n < hi}
    return out


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_nodes_overlapping_is_the_byte_by_byte_answer(seed):
    rnd = random.Random(seed)
    code = random_program(rnd, max_lines=60, base=BASE + PAGE)
    pad = rnd.randrange(0, PAGE)                 # let the code cross a page now and then
    mem = Mem(bytes(pad) + code, base=BASE - pad + PAGE, size=pad + len(code) + 16)
    sc = Scanner(mem.read)
    sc.scan([mem.base + pad])
    for _ in range(8):
        lo = mem.base + rnd.randrange(pad + len(code) + 8)
        hi = lo + rnd.randrange(1, 3 * PAGE)
        assert nodes_overlapping(sc.cfg, lo, hi) == _overlapping_by_byte(sc.cfg, lo, hi)
