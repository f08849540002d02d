"""scanner/insns.py: a block's instructions as bytes + sizes read exactly as the
tuple of rows they replace (what the runtime, patcher, notebooks and JSON read)."""
import pickle

import pytest
from hypothesis import given, settings, strategies as st
from scanhelp import BASE, Mem, asm

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


def test_rows_decoded_on_demand_equal_the_rows_given():
    lazy = Insns(BASE, CODE, bytes(r[1] for r in ROWS))
    given_ = Insns.from_rows(ROWS)
    assert lazy._rows is None
    assert tuple(lazy) == ROWS == tuple(given_)
    assert lazy == given_ and hash(lazy) == hash(given_)
    assert [r[2] for r in lazy] == ["push", "mov", "cli", "mov", "out", "pop", "ret"]


def test_sequence_behaviour_matches_a_tuple_of_rows():
    ins = Insns(BASE, CODE, bytes(r[1] for r in ROWS))
    assert len(ins) == len(ROWS) and bool(ins)
    assert ins[0] == ROWS[0] and ins[-1] == ROWS[-1] and ins[3] == ROWS[3]
    with pytest.raises(IndexError):
        ins[len(ROWS)]
    for lo, hi in [(0, 3), (2, 5), (1, None), (None, -1), (5, 2), (0, 0), (-2, None)]:
        part = ins[lo:hi]
        assert isinstance(part, Insns)
        assert tuple(part) == ROWS[lo:hi] and len(part) == len(ROWS[lo:hi])
        assert part == ROWS[lo:hi] and part == list(ROWS[lo:hi])
    assert ins[::2] == ROWS[::2]
    a, size, mnem, op, data = ins[2]
    assert (mnem, data) == ("cli", b"\xfa")
    assert not Insns(0, b"", b"")


def test_addresses_index_and_split_need_no_decoding():
    ins = Insns(BASE, CODE, bytes(r[1] for r in ROWS))
    assert ins.addrs() == [r[0] for r in ROWS]
    assert ins.end == BASE + len(CODE)
    assert ins.index_of(ROWS[4][0]) == 4 and ins.addr_at(-1) == ROWS[-1][0] and ins.addr_at(2) == ROWS[2][0]
    head, tail = ins.split(3)
    assert ins._rows is None and head._rows is None
    assert tuple(head) + tuple(tail) == ROWS and tail.start == ROWS[3][0]
    for bad in (ROWS[1][0] + 1, BASE - 1, BASE + len(CODE), ROWS[3][0] + 1):
        with pytest.raises(ValueError):
            ins.index_of(bad)


def test_equality_hash_and_pickle():
    ins = Insns.from_rows(ROWS)
    other = Insns(BASE, CODE[:-1] + b"\xc2", bytes(r[1] for r in ROWS))   # ret -> retn's first byte
    assert ins != other and ins != Insns(BASE + 1, CODE, ins.sizes)
    assert ins != ROWS[:-1] and ins != "not rows"
    back = pickle.loads(pickle.dumps(ins))
    assert back == ins and tuple(back) == ROWS and hash(back) == hash(ins)


def test_rows_must_be_consecutive():
    with pytest.raises(ValueError, match="consecutive"):
        Insns.from_rows([ROWS[0], ROWS[2]])
    with pytest.raises(ValueError):
        Insns.from_rows([ROWS[0][:4] + (b"\x55\x55",)])      # size 1, two bytes


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=400), st.lists(st.integers(0, 399), min_size=1, max_size=5),
       st.sampled_from(["c", "python"]))
def test_every_scanned_block_reads_as_its_instructions_decoded_alone(data, starts, engine):
    mem = Mem(data, size=len(data))
    cfg = Scanner(mem.read, engine=engine).scan([BASE + s % len(data) for s in starts])
    for n, d in cfg.graph.nodes(data=True):
        if d.get("kind") != "block":
            continue
        ins = d["insns"]
        assert isinstance(ins, Insns) and ins.start == n and ins.end == d["end"]
        assert ins.data == mem.read(n, d["end"] - n)
        rows = tuple(Insns(ins.start, ins.data, ins.sizes))       # decoded afresh
        for r in rows:
            assert r == alone(r[0], mem.read(r[0], 15))
        assert pickle.loads(pickle.dumps(ins)) == rows
