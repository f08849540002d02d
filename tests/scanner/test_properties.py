"""Property tests: the scanner terminates on any input, and what it decodes is true."""
import random

import capstone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scanhelp import BASE, Mem, random_program

from scanner.pages import START
from scanner.scan import Scanner

MD = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def _check(cfg, mem):
    owner = {}
    for a, size, mnem, op, data in cfg.instructions():
        alone = list(MD.disasm_lite(mem.read(a, 15) or b"", a, 1))
        assert alone and alone[0] == (a, size, mnem, op), (hex(a), alone)
        assert data == mem.read(a, size)
        assert cfg.pages.state(a) == START
        for i in range(size):
            assert a + i not in owner, f"instructions at {owner[a + i]:#x} and {a:#x} overlap"
            owner[a + i] = a
    for b in cfg.blocks():
        d = cfg.graph.nodes[b]
        assert d["insns"] and d["insns"][0][0] == b
        assert d["end"] == d["insns"][-1][0] + d["insns"][-1][1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=600), st.lists(st.integers(0, 599), max_size=4))
def test_random_bytes(data, starts):
    mem = Mem(data)
    sc = Scanner(mem.read)
    cfg = sc.scan([BASE] + [BASE + s for s in starts])
    _check(cfg, mem)


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_programs(seed):
    code = random_program(random.Random(seed))
    mem = Mem(code)
    cfg = Scanner(mem.read).scan([BASE])
    _check(cfg, mem)
    # Every catalogued instruction the scan reached is reported as a site.
    names = {s.addr for s in cfg.sensitive_sites()}
    for a, _s, mnem, _o, _d in cfg.instructions():
        if mnem in ("cli", "sti", "pushfd", "popfd", "in", "out", "hlt", "cpuid", "iretd",
                    "int3", "int"):
            assert a in names


def test_self_referencing_jumps_terminate():
    code = b"\xeb\xfe" + b"\xe9\xfb\xff\xff\xff" + b"\x74\xfe\xeb\xfc"
    mem = Mem(code)
    cfg = Scanner(mem.read).scan(range(BASE, BASE + len(code)))
    _check(cfg, mem)
