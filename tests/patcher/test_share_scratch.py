"""patcher/templates.py share_scratch: two templates back to back in one stub
hand their scratch register over instead of restoring and saving it again.  The
merged pair must do exactly what the two templates do one after the other:
checked on a bare engine for every pair of the flag templates that shares (the
first a pushf(d); a popf(d) ends with the popf itself, so that the block after
it starts at the next guest instruction: docs/fidelity.md, "IF in the real
EFLAGS") and many states."""
import random

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn import x86_const as X

from bt.hyper_layout import FIELDS, FLAG_TABLES, STATE, flag_tables
from conftest import assemble
from patcher.templates import TEMPLATES, Insn, StubContext, share_scratch

HYPER = 0xFF000000
CTX = StubContext(HYPER + STATE, "t")
BYTES = {"pushfd": b"\x9c", "popfd": b"\x9d", "pushf": b"\x66\x9c", "popf": b"\x66\x9d"}
ROW = {"pushfd": "pushfd", "popfd": "popfd", "pushf": "pushfd", "popf": "popfd"}
REGS = ("EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP", "ESP", "EFLAGS")


def _text(name):
    data = BYTES[name]
    return TEMPLATES[ROW[name]](CTX, Insn(0x1000, len(data), name, "", data))


def _run(code_text, vflags, eflags, eax, image):
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x100000)
    uc.mem_map(HYPER, 0x40000)
    uc.mem_write(HYPER + FLAG_TABLES, flag_tables())
    uc.mem_write(HYPER + STATE + FIELDS["vflags"][0], vflags.to_bytes(4, "little"))
    code = assemble(code_text, 0x1000) + b"\xf4"
    uc.mem_write(0x1000, code)
    uc.mem_write(0x7FF8, image.to_bytes(4, "little") * 2)
    uc.reg_write(X.UC_X86_REG_ESP, 0x7FF8)
    uc.reg_write(X.UC_X86_REG_EAX, eax)
    uc.reg_write(X.UC_X86_REG_EBX, 0x12345678)
    uc.reg_write(X.UC_X86_REG_EFLAGS, eflags)
    uc.emu_start(0x1000, 0x1000 + len(code) - 1)
    return ({r: uc.reg_read(getattr(X, "UC_X86_REG_" + r)) for r in REGS},
            bytes(uc.mem_read(0x7F00, 0x100)), bytes(uc.mem_read(HYPER + STATE, 0x100)))


PAIRS = [(a, b) for a in ("pushfd", "pushf") for b in BYTES]


@pytest.mark.parametrize("a, b", PAIRS)
def test_a_merged_pair_does_what_the_two_templates_do(a, b):
    ta, tb = _text(a), _text(b)
    merged = share_scratch(CTX, ta, tb)
    assert merged is not None           # every pair after a pushf(d) shares EAX
    rng = random.Random(f"{a}{b}")
    for _ in range(24):
        vflags = rng.choice((0, 0x1000, 0x2000, 0x3000))
        eflags = 0x2 | rng.choice((0, 0x200)) | (rng.getrandbits(12) & 0x8D5) | rng.choice((0, 0x400, 0x800))
        image = 0x2 | (rng.getrandbits(16) & 0x3ED5)
        eax = rng.getrandbits(32)
        apart = _run(f"{ta}; {tb}", vflags, eflags, eax, image)
        joined = _run(f"{merged[0]}; {merged[1]}", vflags, eflags, eax, image)
        assert joined == apart, (a, b, hex(vflags), hex(eflags), hex(image))


def test_nothing_shares_after_a_popf():
    for a in ("popfd", "popf"):
        assert _text(a).endswith(a)
        for b in BYTES:
            assert share_scratch(CTX, _text(a), _text(b)) is None, (a, b)


def test_no_sharing_when_the_second_reads_the_register_or_the_registers_differ():
    scratch = CTX.field("scratch")
    a = _text("pushfd")
    assert share_scratch(CTX, a, f"mov {scratch}, eax; mov ebx, eax; mov eax, {scratch}") is None
    assert share_scratch(CTX, a, f"mov {scratch}, eax; movzx eax, al; mov eax, {scratch}") is None
    assert share_scratch(CTX, a, f"mov {scratch}, ecx; mov ecx, 1; mov ecx, {scratch}") is None
    # a first template that does not end with the restore
    assert share_scratch(CTX, f"mov {scratch}, eax; mov eax, 1; mov {scratch}, eax", a) is None
