"""patcher/templates.py share_scratch: two templates back to back in one stub
hand their scratch register over instead of restoring and saving it again."""
from patcher.templates import TEMPLATES, Insn, StubContext, share_scratch

CTX = StubContext(0xFF000000, "t")


def _text(row, data, mnemonic, op_str=""):
    return TEMPLATES[row](CTX, Insn(0x100000, len(data), mnemonic, op_str, data))


def test_cli_then_pushfd_share_eax():
    a, b = _text("cli", b"\xfa", "cli"), _text("pushfd", b"\x9c", "pushfd")
    got = share_scratch(CTX, a, b)
    assert got is not None
    before, after = got
    assert before == a.rsplit(";", 1)[0].strip()         # the restore is gone
    assert after == b.split(";", 1)[1].strip()           # and the save
    assert after.startswith("pushfd")


def test_pushfd_then_cli_and_popfd_share_eax():
    push = _text("pushfd", b"\x9c", "pushfd")
    assert share_scratch(CTX, push, _text("cli", b"\xfa", "cli")) is not None
    assert share_scratch(CTX, push, _text("popfd", b"\x9d", "popfd")) is not None


def test_no_sharing_when_the_second_reads_the_register_or_the_registers_differ():
    scratch = CTX.field("scratch")
    a = _text("cli", b"\xfa", "cli")
    assert share_scratch(CTX, a, f"mov {scratch}, eax; mov ebx, eax; mov eax, {scratch}") is None
    assert share_scratch(CTX, a, f"mov {scratch}, eax; movzx eax, al; mov eax, {scratch}") is None
    assert share_scratch(CTX, a, f"mov {scratch}, ecx; mov ecx, 1; mov ecx, {scratch}") is None
    # a first template that does not end with the restore
    assert share_scratch(CTX, f"mov {scratch}, eax; mov eax, 1; mov {scratch}, eax", _text("cli", b"\xfa", "cli")) is None


def test_popfd_hands_eax_to_the_next_template():
    assert share_scratch(CTX, _text("popfd", b"\x9d", "popfd"), _text("pushfd", b"\x9c", "pushfd")) is not None
