"""The C walk (scanner/_walk.c) builds exactly the CFG the Python walk builds.

The Python walk is the readable definition of the rules; the C walk is the
one that runs by default.  Every comparison below is of everything a user
can see: nodes with all attributes, edges with all attributes, page maps,
branch-target index, pending targets, node marks and the instruction -> block answers.
"""
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scanhelp import BASE, PROGRAM, Mem, asm, random_program

from bt.x86 import PAGE
from scanner import native
from scanner.scan import Scanner


def test_c_walk_is_built_and_fits_capstone():
    # `pip install -e .` compiles it; a missing build would silently cost 3x.
    assert native.layout_mismatch() is None
    assert Scanner(Mem(b"\x90").read).engine == "c"


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine 'fast'"):
        Scanner(Mem(b"\x90").read, engine="fast")


def snapshot(sc: Scanner) -> dict:
    cfg = sc.cfg
    return {
        "nodes": {n: dict(d) for n, d in cfg.graph.nodes(data=True)},
        "edges": {(u, v): dict(d) for u, v, d in cfg.graph.edges(data=True)},
        "pages": {b: (bytes(r.flags), r.hash, r.dirty) for b, r in cfg.pages.pages.items()},
        "targets": cfg.branch_targets_in(0, 1 << 33),
        "pending": list(cfg.pending),
        "entries": dict(cfg.entries),
        "marks": {b: bytes(m) for b, m in cfg.marks.pages.items() if any(m)},
        "block_of": block_of_every_instruction(cfg),
        "scanned": sc.insns_scanned,
        "new_sites": list(sc.new_sites),
    }


def block_of_every_instruction(cfg) -> dict:
    """Instruction address -> block start, for every scanned instruction start."""
    out = {}
    for base, rec in cfg.pages.pages.items():
        i = rec.flags.find(1)
        while i >= 0:
            out[base + i] = cfg.block_of(base + i)
            i = rec.flags.find(1, i + 1)
    return out


def both(read, scans, **kw) -> tuple[dict, dict]:
    """Run the same scan calls with each engine; return both snapshots."""
    out = []
    for engine in ("python", "c"):
        sc = Scanner(read, engine=engine, **kw)
        for call, arg in scans:
            getattr(sc, call)(*arg)
        out.append(snapshot(sc))
    return out[0], out[1]


def assert_same(read, scans, **kw):
    py, c = both(read, scans, **kw)
    assert c == py


def test_same_cfg_on_a_program_with_every_edge_kind():
    ptr = BASE + 0x100
    mem = Mem(asm(PROGRAM.format(ptr=ptr)), size=0x200)
    mem.write(ptr, struct.pack("<I", BASE + 0x80))
    mem.write(BASE + 0x80, b"\xfb\xff\xe0\x9a\x00\x00\x01\x00\x08\x00")  # sti; jmp eax; lcall
    assert_same(mem.read, [("scan", ([BASE],)), ("scan_from", (BASE + 3,)),
                           ("scan_from", (BASE + 0x83,))])


def test_same_cfg_on_splits_overlaps_page_crossing_and_zero_fill():
    code = bytearray(2 * PAGE)
    body = asm("nop\n nop\n mov eax, 1\n jmp 0x10ffe", BASE + PAGE - 8)
    code[PAGE - 8:PAGE - 8 + len(body)] = body
    code[PAGE - 2:PAGE + 3] = asm("mov ecx, 0x90909090", BASE + PAGE - 2)[:5]
    mem = Mem(bytes(code))
    assert_same(mem.read, [("scan", ([BASE + PAGE - 8],)),
                           ("scan_from", (BASE + PAGE - 6,)),     # split
                           ("scan_from", (BASE + PAGE - 5,)),     # inside an instruction
                           ("scan_from", (BASE,))])               # zero fill


def test_same_cfg_with_caps():
    mem = Mem(asm(PROGRAM.format(ptr=BASE + 0x100)), size=0x200)
    assert_same(mem.read, [("scan", ([BASE],))], max_insns=3)
    assert_same(mem.read, [("scan", ([BASE],))], max_block_insns=2)


def test_same_cfg_at_the_top_of_the_address_space():
    top = (1 << 32) - 0x10
    mem = Mem(b"\x90" * 14 + b"\x0f", base=top)
    assert_same(mem.read, [("scan", ([top],))])
    mem = Mem(b"\x90" * 15 + b"\xeb", base=top - 1)
    assert_same(mem.read, [("scan", ([top - 1],))])


def test_same_cfg_after_invalidation_and_rescan():
    mem = Mem(asm(PROGRAM.format(ptr=BASE + 0x100)), size=0x200)
    out = []
    for engine in ("python", "c"):
        sc = Scanner(mem.read, engine=engine)
        sc.scan([BASE])
        sc.cfg.pages.mark_dirty(BASE)
        sc.rescan_dirty()
        out.append(snapshot(sc))
    assert out[0] == out[1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=400), st.lists(st.integers(0, 399), min_size=1, max_size=5))
def test_same_cfg_on_random_bytes(data, starts):
    mem = Mem(data)
    assert_same(mem.read, [("scan", ([BASE + s % len(data)],)) for s in starts])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_same_cfg_on_random_programs(seed):
    rnd = random.Random(seed)
    code = random_program(rnd)
    mem = Mem(code, size=len(code) + 16)
    assert_same(mem.read, [("scan", ([BASE],)),
                           ("scan_from", (BASE + rnd.randrange(len(code)),))])


@pytest.mark.slow
def test_same_cfg_on_debians_kernel():
    # The walk's real workload: Debian's i386 kernel from its entry point and
    # its exported functions (benchmarks/scan_rate.py's setup), 1.5 million
    # instructions, 16,000+ splits, blocks across pages.  Both engines, every
    # node, edge, page and mark.
    from bt.images.fetch import ensure_linux_images
    from bt.images.kernel_view import kernel_view
    from scanner.memory import SegmentMemory
    path = ensure_linux_images()["kernel"]
    view = kernel_view(str(path), path.read_bytes())
    mem, entry, funcs = SegmentMemory(view.segments), view.entry, view.exports
    py, c = both(mem.read, [("scan", ([entry], "entry")), ("scan", (funcs, "ksymtab"))])
    assert len(funcs) > 5000 and c["scanned"] > 1_000_000
    for part in py:
        assert c[part] == py[part], part


def test_same_cfg_when_a_block_runs_into_an_old_bad_node():
    # A bad node where memory could not be read when it was first scanned; the
    # memory is there later, and a block decoded from below reaches that
    # address: both engines end the block at the bad node (the Python walk
    # asks the graph, the C walk's horizon stops at the node marks).
    out = []
    for engine in ("python", "c"):
        mem = Mem(b"\x90" * 16)
        sc = Scanner(mem.read, engine=engine)
        sc.scan([BASE + 16])                      # unreadable: a bad node
        mem.buf += b"\x90" * 8 + b"\xc3"          # the code appears
        sc.scan_from(BASE + 8)
        assert sc.cfg.graph.nodes[BASE + 8]["end"] == BASE + 16
        assert sc.cfg.graph.nodes[BASE + 16]["kind"] == "bad"
        out.append(snapshot(sc))
    assert out[0] == out[1]
