"""Stub templates assemble with Keystone to what they mean (decoded back with
capstone: Keystone emits 16-bit forms for some mnemonics), and the stub cache
finds every hypervisor-relative field as a fixup."""
import capstone
import pytest
from unicorn import Uc, UC_ARCH_X86, UC_MODE_32

from patcher.stubcache import StubCache, assemble, find_fixups
from patcher.templates import TEMPLATES, Insn, StubContext
from bt.hyper_layout import HYPER_SIZE, STUBS

BASE = 0xFF000000
CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)

SAMPLES = {
    "cli": ("cli", "", b"\xfa"), "sti": ("sti", "", b"\xfb"),
    "pushfd": ("pushfd", "", b"\x9c"), "popfd": ("popfd", "", b"\x9d"),
    "pushf": ("pushf", "", b"\x66\x9c"), "popf": ("popf", "", b"\x66\x9d"),
    "sgdt": ("sgdt", "ptr [ebx + 4]", b"\x0f\x01\x43\x04"),
    "sidt": ("sidt", "ptr [eax]", b"\x0f\x01\x08"),
    "sldt": ("sldt", "eax", b"\x0f\x00\xc0"), "str": ("str", "word ptr [ecx]", b"\x0f\x00\x09"),
    "smsw": ("smsw", "eax", b"\x0f\x01\xe0"),
    "mov_from_cs": ("mov", "eax, cs", b"\x8c\xc8"), "mov_from_ss": ("mov", "word ptr [esi], ss", b"\x8c\x16"),
    "push_cs": ("push", "cs", b"\x0e"), "push_ss": ("push", "ss", b"\x16"),
    "iretd": ("iretd", "", b"\xcf"),
    "mov_to_sreg": ("mov", "ds, word ptr fs:[ebx + 4]", b"\x64\x8e\x5b\x04"),
    "pop_sreg": ("pop", "ds", b"\x1f"),
    "jmp_far": ("jmp", "ptr [eax + 4]", b"\xff\x68\x04"),
    "mov_to_ss": ("mov", "ss, eax", b"\x8e\xd0"), "pop_ss": ("pop", "ss", b"\x17"),
    "lss": ("lss", "esi, ptr [0x3000]", b"\x0f\xb2\x35\x00\x30\x00\x00"),
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_assembles_without_16_bit_surprises(name):
    mnem, op, data = SAMPLES[name]
    ctx = StubContext(BASE, "t")
    text = TEMPLATES[name](ctx, Insn(0x100000, len(data), mnem, op, data))
    code = assemble(text, BASE + STUBS)
    decoded = list(CS.disasm(code, BASE + STUBS))
    assert sum(i.size for i in decoded) == len(code)
    for i in decoded:
        if i.mnemonic in ("pushf", "popf") and name not in ("pushf", "popf"):
            pytest.fail(f"{name}: Keystone emitted a 16-bit {i.mnemonic}")
        assert i.mnemonic != "push" or i.op_str not in ("cs", "ss") or i.bytes[0] != 0x66


def test_fixups_cover_absolute_state_fields_and_branches_back_to_the_guest():
    at = BASE + STUBS
    code = assemble(f"or dword ptr [{BASE + 8:#x}], 0x200\njmp 0x100005", at)
    fx = find_fixups(code, at, BASE)
    assert sorted(f.kind for f in fx) == ["abs", "rel"]


def test_relocation_moves_every_fixup():
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x200000)
    for b in (BASE, 0xFE000000):
        uc.mem_map(b, HYPER_SIZE)
    cache = StubCache(uc, BASE)
    addr = cache.reserve(32)
    cache.write(addr, assemble(f"mov eax, dword ptr [{BASE:#x}]\njmp 0x100005", addr))
    uc.mem_write(0x100000, b"\xe9" + ((addr - 0x100005) & 0xFFFFFFFF).to_bytes(4, "little"))
    cache.add_guest_jump(0x100000)
    new = 0xFE000000
    uc.mem_write(new, bytes(uc.mem_read(BASE, HYPER_SIZE)))
    cache.relocate(new, lambda a, n: bytes(uc.mem_read(a, n)), uc.mem_write)
    moved = addr - BASE + new
    insns = list(CS.disasm(bytes(uc.mem_read(moved, 16)), moved))
    assert insns[0].op_str == f"eax, dword ptr [{new:#x}]"
    assert insns[1].op_str == "0x100005"
    guest = list(CS.disasm(bytes(uc.mem_read(0x100000, 5)), 0x100000))[0]
    assert int(guest.op_str, 16) == moved


def test_16_bit_flag_templates_use_the_16_bit_forms():
    # one template per catalog row: pushfd's and popfd's also translate 66 9C / 66 9D
    for name, row, op in (("pushf", "pushfd", 0x9C), ("popf", "popfd", 0x9D)):
        mnem, o, data = SAMPLES[name]
        code = assemble(TEMPLATES[row](StubContext(BASE, "t"), Insn(0, 2, mnem, o, data)), BASE)
        assert bytes([0x66, op]) in code
