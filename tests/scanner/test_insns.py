"""scanner/insns.py: a block's instructions as bytes + sizes read exactly as the
tuple of rows they replace (what the runtime, patcher, notebooks and JSON read)."""
import pickle
import random

import pytest
from hypothesis import given, settings, strategies as st
from scanhelp import BASE, Mem, asm, random_program

from scanner.decode import new_capstone
from scanner.insns import Insns
from scanner.scan import Scanner

CODE = asm("push ebp\n mov ebp, esp\n cli\n mov eax, dword ptr [0x1234]\n out 0x80, al\n"
           "pop ebp\n ret")
MD = new_capstone()


def alone(addr: int, data: bytes) -> tuple:
    """Decoding one instruction alone at its address."""
    a, size, mnem, op = next(MD.disasm_lite(data, addr, 1))
    return (a, size, mnem, op, data[:size])


def rows_of(code: bytes, base: int = BASE) -> tuple:
    out, off = [], 0
    while off < len(code):
        r = alone(base + off, code[off:off + 15])
        out.append(r)
        off += r[1]
    return tuple(out)


ROWS = rows_of(CODE)
SIZES = bytes(r[1] for r in ROWS)


def lazy() -> Insns:
    return Insns(BASE, CODE, SIZES)


def test_rows_decoded_on_demand_equal_the_rows_given():
    lazy_ = lazy()
    given_ = Insns.from_rows(ROWS)
    assert lazy_._rows is None
    assert tuple(lazy_) == ROWS == tuple(given_)
    assert lazy_ == given_ and hash(lazy_) == hash(given_)
    assert [r[2] for r in lazy_] == ["push", "mov", "cli", "mov", "out", "pop", "ret"]


def test_from_rows_round_trip():
    ins = Insns.from_rows(ROWS)
    assert (ins.start, ins.data, ins.sizes) == (BASE, CODE, SIZES)
    assert ins.rows() == ROWS
    # Rows given as lists (as JSON gives them back) are the same rows.
    assert Insns.from_rows([list(r) for r in ROWS]) == ins
    # What from_rows keeps decodes back to the same rows, each instruction alone.
    again = Insns(ins.start, ins.data, ins.sizes)
    assert again.rows() == ROWS
    assert all(r == alone(r[0], CODE[r[0] - BASE:r[0] - BASE + 15]) for r in again)
    empty = Insns.from_rows([])
    assert len(empty) == 0 and empty.rows() == () and empty == () and empty.addrs() == []


def test_sequence_behaviour_matches_a_tuple_of_rows():
    ins = lazy()
    assert len(ins) == len(ROWS) and bool(ins)
    assert ins[0] == ROWS[0] and ins[-1] == ROWS[-1] and ins[3] == ROWS[3]
    assert [ins[i] for i in range(-len(ROWS), len(ROWS))] == [ROWS[i] for i in range(-len(ROWS), len(ROWS))]
    for i in (len(ROWS), -len(ROWS) - 1):
        with pytest.raises(IndexError):
            ins[i]
    for lo, hi in [(0, 3), (2, 5), (1, None), (None, -1), (5, 2), (0, 0), (-2, None),
                   (None, None), (3, 4), (len(ROWS), None), (-100, 100), (6, 7)]:
        part = ins[lo:hi]
        assert isinstance(part, Insns)
        assert tuple(part) == ROWS[lo:hi] and len(part) == len(ROWS[lo:hi])
        assert part == ROWS[lo:hi] and part == list(ROWS[lo:hi])
        assert pickle.loads(pickle.dumps(part)) == ROWS[lo:hi]
        if len(part):
            assert part.start == ROWS[lo:hi][0][0] and part.end == ROWS[lo:hi][-1][0] + ROWS[lo:hi][-1][1]
    for step in [slice(None, None, 2), slice(1, None, 3), slice(None, None, -1), slice(5, 1, -2),
                 slice(None, None, 1), slice(4, 1, 1)]:
        assert tuple(ins[step]) == ROWS[step] and ins[step] == ROWS[step], step
    a, size, mnem, op, data = ins[2]
    assert (mnem, data) == ("cli", b"\xfa")
    assert not Insns(0, b"", b"") and not ins[3:3]


def test_iteration_and_sequence_helpers():
    ins = lazy()
    assert list(ins) == list(ROWS) and list(iter(ins)) == list(ROWS)
    assert list(reversed(ins)) == list(reversed(ROWS))
    assert ROWS[4] in ins and (BASE, 1, "nop", "", b"\x90") not in ins
    assert ins.index(ROWS[3]) == 3 and ins.count(ROWS[0]) == 1
    assert list(ins) == list(ins)                 # iterating again gives the same rows


def test_equality_with_insns_tuples_and_lists():
    ins = lazy()
    assert ins == Insns.from_rows(ROWS) and ins == ROWS and ins == list(ROWS)
    assert ROWS == ins and list(ROWS) == ins      # from either side
    assert not (ins != ROWS) and not (ins != Insns.from_rows(ROWS))
    assert ins == tuple(list(r) for r in ROWS)    # rows as lists
    assert ins != ROWS[:-1] and ins != ROWS + ROWS[:1] and ins != ()
    assert ins != ROWS[1:] and ins[1:] != ROWS
    # Bytes that differ make another block, with or without decoding.
    other = Insns(BASE, CODE[:-1] + b"\xc2", SIZES)   # ret -> retn's first byte
    assert ins != other and other != ins
    moved = Insns(BASE + 1, CODE, SIZES)
    assert ins != moved and ins != rows_of(CODE, BASE + 1)
    resized = Insns(BASE, CODE, bytes([SIZES[0] + SIZES[1]]) + SIZES[2:])
    assert ins != resized
    assert ins != "not rows" and ins != None and ins != 7     # noqa: E711


def test_hash_agrees_with_equality():
    a, b = lazy(), Insns.from_rows(ROWS)
    assert a == b and hash(a) == hash(b)
    assert len({a, b, pickle.loads(pickle.dumps(a))}) == 1
    assert {a: 1}[b] == 1
    assert ins_set_size(ROWS) == 1
    # Empty blocks are all equal, wherever they start.
    e1, e2 = Insns(0, b"", b""), Insns(BASE, b"", b"", ())
    assert e1 == e2 and hash(e1) == hash(e2) and e1 == lazy()[4:2]
    assert hash(e1) == hash(lazy()[4:2])
    # Equal slices of differently built blocks hash equal.
    assert a[2:5] == b[2:5] and hash(a[2:5]) == hash(b[2:5])


def ins_set_size(rows) -> int:
    return len({Insns.from_rows(rows), Insns.from_rows(rows)[:], Insns.from_rows(list(rows))})


def test_addresses_index_and_split_need_no_decoding():
    ins = lazy()
    assert ins.addrs() == [r[0] for r in ROWS]
    assert ins.end == BASE + len(CODE) and ins.start == BASE
    for i, r in enumerate(ROWS):
        assert ins.index_of(r[0]) == i
        assert ins.addr_at(i) == r[0] and ins.addr_at(i - len(ROWS)) == r[0]
    assert ins.addr_at(-1) == ROWS[-1][0] and ins.addr_at(2) == ROWS[2][0]
    for i in (len(ROWS), -len(ROWS) - 1):
        with pytest.raises(IndexError):
            ins.addr_at(i)
    starts = {r[0] for r in ROWS}
    for bad in range(BASE - 20, BASE + len(CODE) + 20):
        if bad not in starts:              # inside an instruction, or outside the block
            with pytest.raises(ValueError):
                ins.index_of(bad)
    for i in range(len(ROWS) + 1):
        head, tail = ins.split(i)
        assert tuple(head) + tuple(tail) == ROWS
        assert tuple(head) == ROWS[:i] and tuple(tail) == ROWS[i:]
        assert head.start == BASE and head.end == tail.start
        if i < len(ROWS):
            assert tail.start == ROWS[i][0] and tail.index_of(ROWS[i][0]) == 0
        assert tail.end == ins.end
    assert ins._rows is None           # none of the above decoded the block itself
    # Splitting decoded rows gives the same halves.
    given_ = Insns.from_rows(ROWS)
    assert [tuple(p) for p in given_.split(3)] == [tuple(p) for p in lazy().split(3)]


def test_equality_hash_and_pickle():
    ins = Insns.from_rows(ROWS)
    other = Insns(BASE, CODE[:-1] + b"\xc2", SIZES)   # ret -> retn's first byte
    assert ins != other and ins != Insns(BASE + 1, CODE, ins.sizes)
    assert ins != ROWS[:-1] and ins != "not rows"
    for x in (ins, lazy(), Insns(0, b"", b""), ins[2:5]):
        back = pickle.loads(pickle.dumps(x))
        assert isinstance(back, Insns)
        assert back == x and tuple(back) == tuple(x) and hash(back) == hash(x)
        assert (back.start, back.data, back.sizes) == (x.start, x.data, x.sizes)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(ins, proto)) == ROWS


def test_rows_must_be_consecutive():
    with pytest.raises(ValueError, match="consecutive"):
        Insns.from_rows([ROWS[0], ROWS[2]])                 # a gap
    with pytest.raises(ValueError):
        Insns.from_rows([ROWS[1], ROWS[0]])                 # out of order
    with pytest.raises(ValueError):
        Insns.from_rows([ROWS[0], ROWS[0]])                 # the same instruction twice
    with pytest.raises(ValueError):
        Insns.from_rows([ROWS[0][:4] + (b"\x55\x55",)])      # size 1, two bytes
    with pytest.raises(ValueError):
        Insns.from_rows([(BASE, 0, "", "", b"")])            # no bytes


def test_comparing_with_a_tuple_that_is_not_rows_is_false():
    # A tuple of rows compared with any other tuple is simply unequal.
    assert (ROWS == (1, 2)) is False
    assert (lazy() == (1, 2)) is False


def test_equal_to_its_rows_means_the_same_hash():
    # Python's rule: objects that compare equal have the same hash (so an Insns
    # finds the entry a tuple of its rows keyed, as that tuple did).
    ins = lazy()
    assert ins == ROWS
    assert hash(ins) == hash(ROWS)


# --- every block the scanner builds ---------------------------------------------

def check_blocks(cfg, mem) -> int:
    n_blocks = 0
    for n, d in cfg.graph.nodes(data=True):
        if d.get("kind") != "block":
            continue
        n_blocks += 1
        ins = d["insns"]
        assert isinstance(ins, Insns) and ins.start == n and ins.end == d["end"]
        assert ins.data == mem.read(n, d["end"] - n) and sum(ins.sizes) == len(ins.data)
        stored = tuple(ins)                                         # as the scan left them
        fresh = tuple(Insns(ins.start, ins.data, ins.sizes))       # decoded afresh
        for r in stored:
            assert r == alone(r[0], mem.read(r[0], 15))
        assert fresh == stored and ins.addrs() == [r[0] for r in stored]
        back = pickle.loads(pickle.dumps(Insns(ins.start, ins.data, ins.sizes)))
        assert back == stored and back == list(stored) and back == ins and hash(back) == hash(ins)
        assert pickle.loads(pickle.dumps(ins)) == stored
        assert Insns.from_rows(stored) == ins
    return n_blocks


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=400), st.lists(st.integers(0, 399), min_size=1, max_size=5),
       st.sampled_from(["c", "python"]))
def test_every_scanned_block_reads_as_its_instructions_decoded_alone(data, starts, engine):
    mem = Mem(data, size=len(data))
    cfg = Scanner(mem.read, engine=engine).scan([BASE + s % len(data) for s in starts])
    check_blocks(cfg, mem)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 200), min_size=1, max_size=4),
       st.sampled_from(["c", "python"]))
def test_every_block_of_an_assembled_program_reads_as_decoded_alone(seed, starts, engine):
    code = random_program(random.Random(seed), 20)
    mem = Mem(code, size=len(code))
    sc = Scanner(mem.read, engine=engine)
    cfg = sc.scan([BASE] + [BASE + s % len(code) for s in starts[1:]])
    assert check_blocks(cfg, mem) >= (0 if cfg.bad_blocks() else 1)
    sc.scan_from(BASE + starts[0] % len(code))          # may split a block
    check_blocks(cfg, mem)
