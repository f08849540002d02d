"""patcher/templates.py share_scratch: two templates back to back in one stub
hand their scratch register over instead of restoring and saving it again.  The
merged pair must do exactly what the two templates do one after the other:
checked on a bare engine for pairs of the templates that still use a scratch
register (stores of a selector, a descriptor-table register or a status word
to memory) and many states.  The flag templates use none since their stubs
stopped touching the state page (docs/benchmarks.md, "Flag stubs without
state-page accesses"): nothing shares with them, and pairs of them run back to
back as assembled, for every guest IOPL."""
import random

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn import x86_const as X

from bt.hyper_layout import FIELDS, SELECTOR_VIEW, STATE, selector_view_table
from conftest import assemble
from patcher.templates import TEMPLATES, Insn, StubContext, share_scratch

HYPER = 0xFF000000
CTX = StubContext(HYPER + STATE, "t")
MEM = 0x3000
# (row, bytes, mnemonic, op_str): memory forms whose templates save and restore EAX
SCRATCH_USERS = {
    "cs_store": ("mov_from_cs", b"\x8c\x0b", "mov", "word ptr [ebx], cs"),
    "ss_store": ("mov_from_ss", b"\x8c\x53\x02", "mov", "word ptr [ebx + 2], ss"),
    "sgdt": ("sgdt", b"\x0f\x01\x43\x08", "sgdt", "[ebx + 8]"),
    "sidt": ("sidt", b"\x0f\x01\x4b\x10", "sidt", "[ebx + 0x10]"),
    "smsw": ("smsw", b"\x0f\x01\x63\x18", "smsw", "word ptr [ebx + 0x18]"),
    "str": ("str", b"\x0f\x00\x4b\x1c", "str", "word ptr [ebx + 0x1c]"),
}
FLAGS = {"pushfd": ("pushfd", b"\x9c", "pushfd", ""), "popfd": ("popfd", b"\x9d", "popfd", ""),
         "pushf": ("pushfd", b"\x66\x9c", "pushf", ""), "popf": ("popfd", b"\x66\x9d", "popf", "")}
REGS = ("EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP", "ESP", "EFLAGS")


def _text(spec, ctx=CTX):
    row, data, mnemonic, op_str = spec
    return TEMPLATES[row](ctx, Insn(0x1000, len(data), mnemonic, op_str, data))


def _run(code_text, eflags, eax, state, image=0x2):
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x100000)
    uc.mem_map(HYPER, 0x40000)
    uc.mem_write(HYPER + SELECTOR_VIEW, selector_view_table())
    uc.mem_write(HYPER + STATE, state)
    code = assemble(code_text, 0x1000) + b"\xf4"
    uc.mem_write(0x1000, code)
    uc.mem_write(0x7FF8, image.to_bytes(4, "little") * 2)
    uc.reg_write(X.UC_X86_REG_ESP, 0x7FF8)
    uc.reg_write(X.UC_X86_REG_EAX, eax)
    uc.reg_write(X.UC_X86_REG_EBX, MEM)
    uc.reg_write(X.UC_X86_REG_EFLAGS, eflags)
    uc.emu_start(0x1000, 0x1000 + len(code) - 1)
    return ({r: uc.reg_read(getattr(X, "UC_X86_REG_" + r)) for r in REGS},
            bytes(uc.mem_read(0x7F00, 0x100)), bytes(uc.mem_read(MEM, 0x40)),
            bytes(uc.mem_read(HYPER + STATE, 0x100)))


def _state(rng) -> bytes:
    page = bytearray(rng.randbytes(0x100))
    page[FIELDS["vflags"][0]:FIELDS["vflags"][0] + 4] = bytes(4)
    return bytes(page)


PAIRS = [(a, b) for a in SCRATCH_USERS for b in SCRATCH_USERS]
PARTIAL_LOAD = {"smsw", "str"}


@pytest.mark.parametrize("a, b", PAIRS)
def test_a_merged_pair_does_what_the_two_templates_do(a, b):
    ta, tb = _text(SCRATCH_USERS[a]), _text(SCRATCH_USERS[b])
    merged = share_scratch(CTX, ta, tb)
    if b in PARTIAL_LOAD:
        assert merged is None           # its first load writes only AX: EAX's top is still the guest's
        return
    assert merged is not None           # every other pair of these shares EAX
    rng = random.Random(f"{a}{b}")
    for _ in range(10):
        eflags = 0x2 | rng.choice((0, 0x200)) | (rng.getrandbits(12) & 0x8D5) | rng.choice((0, 0x400, 0x800))
        eax, state = rng.getrandbits(32), _state(rng)
        apart = _run(f"{ta}; {tb}", eflags, eax, state)
        joined = _run(f"{merged[0]}; {merged[1]}", eflags, eax, state)
        assert joined == apart, (a, b, hex(eflags))
        assert apart[0]["EAX"] == eax


@pytest.mark.parametrize("iopl", range(4))
def test_flag_templates_share_nothing_and_never_touch_the_state_page(iopl):
    ctx = StubContext(HYPER + STATE, "t", iopl)
    for a in FLAGS:
        ta = _text(FLAGS[a], ctx)
        assert "ptr [0x" not in ta and "scratch" not in ta, ta     # no absolute: no area access
        for b in list(FLAGS) + list(SCRATCH_USERS):
            assert share_scratch(ctx, ta, _text((FLAGS | SCRATCH_USERS)[b], ctx)) is None, (a, b)
            assert share_scratch(ctx, _text((FLAGS | SCRATCH_USERS)[b], ctx), ta) is None, (b, a)


@pytest.mark.parametrize("iopl", range(4))
def test_flag_pairs_back_to_back(iopl):
    """pushf(d) then popf(d) (the order Linux's local_irq_save/restore runs
    them, with code between): the pushed image carries the guest's IOPL, the
    pop of it runs natively (same IOPL: no exit) and restores every flag and
    ESP; the state page is untouched.  At CPL 0 here, so the real IOPL is set
    to 1 as at CPL 1 (the templates tell only CPL 3 apart)."""
    ctx = StubContext(HYPER + STATE, "t", iopl)
    rng = random.Random(iopl)
    for push, pop in (("pushfd", "popfd"), ("pushf", "popf")):
        text = f"{_text(FLAGS[push], ctx)}; {_text(FLAGS[pop], ctx)}"
        for _ in range(12):
            eflags = 0x1002 | (rng.getrandbits(12) & 0xCD5)
            eax, state = rng.getrandbits(32), _state(rng)
            regs, stack, _mem, after = _run(text, eflags, eax, state)
            # (a native popf at CPL 0 loads the IOPL it pops: the guest's)
            assert regs["ESP"] == 0x7FF8 and regs["EAX"] == eax
            assert hex(regs["EFLAGS"]) == hex(eflags & ~0x3000 | iopl << 12)
            size = 4 if push == "pushfd" else 2
            pushed = int.from_bytes(stack[0xF8 - size:0xF8], "little")
            want = (eflags & ~0x3000 | iopl << 12) & (0xFFFFFFFF if size == 4 else 0xFFFF)
            assert hex(pushed) == hex(want)
            assert after == state


def test_nothing_shares_after_a_popf():
    for a in ("popfd", "popf"):
        assert _text(FLAGS[a]).endswith(a)
        for b in FLAGS:
            assert share_scratch(CTX, _text(FLAGS[a]), _text(FLAGS[b])) is None, (a, b)


def test_no_sharing_when_the_second_reads_the_register_or_the_registers_differ():
    scratch = CTX.field("scratch")
    a = _text(SCRATCH_USERS["sgdt"])
    assert share_scratch(CTX, a, f"mov {scratch}, eax; mov ebx, eax; mov eax, {scratch}") is None
    assert share_scratch(CTX, a, f"mov {scratch}, eax; movzx eax, al; mov eax, {scratch}") is None
    assert share_scratch(CTX, a, f"mov {scratch}, ecx; mov ecx, 1; mov ecx, {scratch}") is None
    # a first template that does not end with the restore
    assert share_scratch(CTX, f"mov {scratch}, eax; mov eax, 1; mov {scratch}, eax", a) is None
