"""patcher/templates.py share_scratch: two templates back to back in one stub
hand their scratch register over instead of restoring and saving it again, and
the second skips a state-page load whose value the first left in EAX.  The
merged pair must do exactly what the two templates do one after the other:
checked on a bare engine for every pair of the flag templates and many states."""
import random

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn import x86_const as X

from bt.hyper_layout import FIELDS, FLAG_TABLES, STATE, flag_tables
from conftest import assemble
from patcher.templates import TEMPLATES, Insn, StubContext, share_scratch

HYPER = 0xFF000000
CTX = StubContext(HYPER + STATE, "t")
BYTES = {"cli": b"\xfa", "sti": b"\xfb", "pushfd": b"\x9c", "popfd": b"\x9d", "pushf": b"\x66\x9c",
         "popf": b"\x66\x9d"}
ROW = {"cli": "cli", "sti": "sti", "pushfd": "pushfd", "popfd": "popfd", "pushf": "pushfd", "popf": "popfd"}
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


PAIRS = [(a, b) for a in BYTES for b in BYTES]


@pytest.mark.parametrize("a, b", PAIRS)
def test_a_merged_pair_does_what_the_two_templates_do(a, b):
    ta, tb = _text(a), _text(b)
    merged = share_scratch(CTX, ta, tb)
    assert merged is not None           # every pair of these templates shares EAX
    rng = random.Random(f"{a}{b}")
    for _ in range(24):
        vflags = rng.choice((0, 0x200)) | rng.choice((0, 0x1000, 0x2000, 0x3000))
        eflags = 0x2 | rng.choice((0, 0x200)) | (rng.getrandbits(12) & 0x8D5) | rng.choice((0, 0x400, 0x800))
        image = 0x2 | (rng.getrandbits(16) & 0x3ED5)
        eax = rng.getrandbits(32)
        apart = _run(f"{ta}; {tb}", vflags, eflags, eax, image)
        joined = _run(f"{merged[0]}; {merged[1]}", vflags, eflags, eax, image)
        assert joined == apart, (a, b, hex(vflags), hex(eflags), hex(image))


def test_the_flag_templates_share_and_skip_loads():
    cli_push = share_scratch(CTX, _text("cli"), _text("pushfd"))
    assert cli_push is not None and "mov ah, al" in cli_push[1]
    push_cli = share_scratch(CTX, _text("pushfd"), _text("cli"))
    assert push_cli is not None and push_cli[1].startswith("movzx eax, ah")
    pop_push = share_scratch(CTX, _text("popfd"), _text("pushfd"))
    assert pop_push is not None and CTX.field("vflags") not in pop_push[1]


def test_no_sharing_when_the_second_reads_the_register_or_the_registers_differ():
    scratch = CTX.field("scratch")
    a = _text("cli")
    assert share_scratch(CTX, a, f"mov {scratch}, eax; mov ebx, eax; mov eax, {scratch}") is None
    assert share_scratch(CTX, a, f"mov {scratch}, eax; movzx eax, al; mov eax, {scratch}") is None
    assert share_scratch(CTX, a, f"mov {scratch}, ecx; mov ecx, 1; mov ecx, {scratch}") is None
    # a first template that does not end with the restore
    assert share_scratch(CTX, f"mov {scratch}, eax; mov eax, 1; mov {scratch}, eax", a) is None
