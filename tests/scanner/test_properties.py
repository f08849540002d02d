"""Property tests: the scanner terminates on any input, and what it decodes is true."""
import random

import capstone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scanhelp import BASE, KS, Mem

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


TEMPLATES = [
    "nop", "inc eax", "mov eax, {imm}", "add ebx, ecx", "push eax", "pop ebx", "cli", "sti",
    "pushfd", "popfd", "in al, dx", "out 0x80, al", "mov eax, cr0", "hlt", "cpuid",
    "jz L{l}", "jnz L{l}", "jmp L{l}", "call L{l}", "loop L{l}", "ret", "iretd", "int3",
    "jmp eax", "call dword ptr [ebx]", "mov eax, dword ptr [0x{imm:x}]", "int 0x80",
]


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_programs(seed):
    rnd = random.Random(seed)
    n = rnd.randint(1, 40)
    lines = []
    for i in range(n):
        lines.append(f"L{i}:")
        t = rnd.choice(TEMPLATES)
        lines.append(t.format(l=rnd.randrange(n), imm=rnd.randrange(1 << 32)))
    code = bytes(KS.asm("\n".join(lines), BASE)[0])
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
