"""The built-in demo guests: sources, encodings, loading, and (when the engine is
present) their output under pure emulation against the *.expected files."""
from __future__ import annotations

import io
import re

import pytest
from capstone import Cs, CS_ARCH_X86, CS_MODE_32

from bt import demos
from bt.errors import BadInput
from bt.machine import MIB, descriptor

REQUIRED = {"hello", "timer", "probe-flags", "probe-tables", "probe-segments",
            "probe-protection", "smc", "fnptr", "syscall", "exceptions", "cpuloop",
            "hotflags", "paging"}

# Sensitive / privileged instructions each demo exists to exercise, as capstone
# names them: the encodings must really contain them (and in 32-bit form).
MUST_CONTAIN = {
    "probe-flags": {"pushfd", "popfd", "cli", "sti"},
    "probe-tables": {"sgdt", "sidt", "sldt", "str", "smsw", "lgdt", "lidt", "lldt", "ltr"},
    "probe-segments": {"push cs", "push ss", "mov eax, cs", "mov eax, ss", "call ptr"},
    "probe-protection": {"lar", "lsl", "verr", "verw", "ltr"},
    "timer": {"pushfd", "cli", "popfd", "sti", "hlt", "iretd"},
    "syscall": {"iretd", "int 0x80", "int 0x30", "ltr", "push ds", "pop ds"},
    "exceptions": {"div", "ud2", "int3", "mov fs, eax", "int 0x31"},
    "smc": {"pushfd", "cli", "sti"},
    "hotflags": {"cli", "sti", "pushfd", "popfd"},
    "paging": {"mov cr3, eax", "mov cr0, eax", "mov eax, cr2", "invlpg", "int 0x80", "iretd"},
}

LOAD = demos.LOAD_ADDR


def _reachable(code: bytes) -> list:
    """Recursive-descent disassembly from the entry, also seeded with every
    `mov eax, imm32` or `mov dword ptr [x], imm32` that points into the image
    (the demos load handler addresses into eax for set_gate and iretd frames,
    and store resume addresses with the second form; strings go through esi),
    so interrupt handlers and ring-3 code are reached too."""
    md = Cs(CS_ARCH_X86, CS_MODE_32)
    end = LOAD + len(code)
    seen: dict[int, object] = {}
    work = [LOAD]
    # mov eax, imm32 / mov dword ptr [disp32], imm32 (resume addresses)
    for m in re.finditer(rb"\xb8|\xc7\x05....", code, re.S):
        imm = int.from_bytes(code[m.end():m.end() + 4], "little")
        if LOAD <= imm < end:
            work.append(imm)
    while work:
        addr = work.pop()
        while LOAD <= addr < end and addr not in seen:
            insn = next(md.disasm(code[addr - LOAD:addr - LOAD + 16], addr, 1), None)
            if insn is None:
                break
            seen[addr] = insn
            mn = insn.mnemonic
            if mn.startswith("j") or mn == "call":
                try:
                    work.append(int(insn.op_str, 16))
                except ValueError:
                    pass
            if mn in ("ret", "retf", "iretd", "jmp", "ljmp", "ud2") or mn == "hlt":
                break
            addr += insn.size
    return [seen[a] for a in sorted(seen)]


LEGACY_PREFIXES = {0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65}


def _prefixes(insn) -> bytes:
    out = bytearray()
    for b in insn.bytes:
        if b not in LEGACY_PREFIXES:
            break
        out.append(b)
    return bytes(out)


def _text(insn) -> str:
    return f"{insn.mnemonic} {insn.op_str}".strip()


def test_required_demos_are_listed():
    assert REQUIRED <= set(demos.list_demos())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_demo_assembles_and_has_expected_output(name):
    code = demos.assemble(name)
    assert len(code) > 100
    exp = demos.expected_output(name)
    assert exp.endswith(b"\n") and len(exp.splitlines()) >= 1
    # one "name: value" line per observation (the syscall demo's user text aside)
    for line in exp.decode().splitlines():
        if name == "hello" or line.startswith("user: "):
            continue
        assert re.fullmatch(r"[\w.+\[\]]+: 0x[0-9a-f]{8}", line), line


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_no_16_bit_forms_slipped_in(name):
    """Keystone emits 16-bit forms for pushf, push seg, push SYMBOL, sgdt...;
    every reachable instruction with an operand-size prefix must be a genuine
    16-bit memory store, nothing else."""
    insns = _reachable(demos.assemble(name))
    assert len(insns) > 30
    for insn in insns:
        if 0x66 in _prefixes(insn):
            assert insn.mnemonic == "mov" and insn.op_str.startswith("word ptr ["), _text(insn)


@pytest.mark.parametrize("name", sorted(MUST_CONTAIN))
def test_demo_contains_its_sensitive_instructions(name):
    texts = [_text(i) for i in _reachable(demos.assemble(name))]
    for want in MUST_CONTAIN[name]:
        assert any(t == want or t.startswith(want + " ") or t.startswith(want + ",")
                   or t == want.split()[0] and " " not in want for t in texts), want
    # the descriptor-table instructions are the 32-bit forms (no 0x66 prefix)
    for insn in _reachable(demos.assemble(name)):
        if insn.mnemonic in ("sgdt", "sidt", "lgdt", "lidt", "pushfd", "popfd"):
            assert 0x66 not in _prefixes(insn), _text(insn)


def test_push_cs_is_one_byte():
    insns = _reachable(demos.assemble("probe-segments"))
    pushes = [i for i in insns if i.mnemonic == "push" and i.op_str in ("cs", "ss")]
    assert sorted(bytes(i.bytes) for i in pushes) == [b"\x0e", b"\x16"]


def test_fnptr_targets_are_not_statically_reachable():
    """The computed-pointer functions hold the demo's only smsw and its sti:
    a scan that follows direct control flow (and immediates) never sees them."""
    texts = {_text(i) for i in _reachable(demos.assemble("fnptr"))}
    assert not any(t.startswith("smsw") for t in texts)
    assert "sti" not in texts
    code = demos.assemble("fnptr")
    assert b"\x0f\x01\xe0" in code  # smsw eax is in the image all the same


def test_source_lint():
    """Spellings that Keystone assembles into the wrong (16-bit) form."""
    bad = re.compile(r"^\s*(pushf|popf|pushfw|popfw|sgdt|sidt|lgdt|lidt|"
                     r"push\s+[a-z_][a-z0-9_]*|pop\s+[cdefgs]s)\s*(#.*)?$", re.I)
    regs = {"eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp"}
    for name in demos.list_demos():
        for line in demos.full_source(name).splitlines():
            m = bad.match(line)
            if m and m.group(1).split()[-1].lower() not in regs:
                pytest.fail(f"{name}: {line.strip()!r}")


def test_gdt_template_matches_machine_descriptors():
    """The demos' GDT is pc32's flat layout (bt.machine) with accessed bits set."""
    code = demos.assemble("hello")
    want = b"".join(descriptor(0, 0xFFFFF, acc) for acc in (0x9B, 0x93, 0xFB, 0xF3))
    assert want in code


def test_load_demo_image():
    img = demos.load_demo("hello", 64 * MIB)
    assert img.format == "demo" and img.name == "hello"
    assert img.entry == LOAD and img.path == "demo:hello"
    assert len(img.segments) == 1
    seg = img.segments[0]
    assert seg.addr == LOAD and seg.data == demos.assemble("hello")


def test_unknown_demo_is_bad_input():
    for call in (lambda: demos.load_demo("nope", 64 * MIB), lambda: demos.demo_source("nope"),
                 lambda: demos.expected_output("nope")):
        with pytest.raises(BadInput, match=r"unknown demo guest 'nope'; known: .*hello"):
            call()


def test_too_little_ram_is_bad_input():
    with pytest.raises(BadInput, match="needs at least"):
        demos.load_demo("hello", 1 * MIB)


def test_assembly_is_cached():
    assert demos.assemble("hello") is demos.assemble("hello")


# -- under the engine -----------------------------------------------------------
vm_mod = pytest.importorskip("runtime.vm", reason="engine not present yet")


def _run(name, mode="emulate"):
    from bt.machine import MachineConfig
    img = demos.load_demo(name, 64 * MIB)
    return vm_mod.VM(img, MachineConfig(mode=mode, max_instructions=400_000_000),
                     stdout=io.BytesIO()).run()


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_demo_output_under_emulate(name):
    first = _run(name)
    assert (first.exit_status, first.reason) == (0, "debug-exit"), first.message
    assert first.serial.decode() == demos.expected_output(name).decode()
    second = _run(name)
    assert second.serial == first.serial
    assert second.retired == first.retired
    assert second.counters == first.counters
