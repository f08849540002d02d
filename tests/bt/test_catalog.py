"""The sensitive-instruction catalog: encodings, the fast classifier, the generated doc."""
import pathlib

import capstone
import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, Ks

from bt import catalog
from bt.catalog import CATALOG, Klass, RIGroup, by_mnemonic, by_name, classify, classify_bytes

ROOT = pathlib.Path(__file__).resolve().parents[2]
MD = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
KS = Ks(KS_ARCH_X86, KS_MODE_32)


def _examples(enc):
    """Byte strings for an encoding: every accepted ModRM (with a disp32 where the
    ModRM asks for one), plus immediates for the operand kinds we list."""
    tail = {"ib": b"\x60", "iw": b"\x04\x00", "ptr16:32": b"\x00\x10\x00\x00\x08\x00"}.get(
        enc.operands, b"")
    if not enc.has_modrm:
        modrms = [0xC0] if enc.operands == "/r" else [None]
    else:
        modrms = enc.modrm_bytes()
    out = []
    for m in modrms:
        if m is None:
            out.append(enc.opcode + tail)
            continue
        mod, rm = m >> 6, m & 7
        extra = b""
        if mod != 3 and rm == 4:
            extra += b"\x24"                      # SIB: [esp]
        if (mod == 0 and rm == 5) or mod == 2:
            extra += b"\x00\x20\x00\x00"
        elif mod == 1:
            extra += b"\x08"
        out.append(enc.opcode + bytes([m]) + extra + tail)
    return out


def _decode(code):
    r = list(MD.disasm_lite(code, 0x1000, 1))
    return r[0] if r else None


@pytest.mark.parametrize("row", CATALOG, ids=lambda r: r.name)
def test_every_encoding_decodes_to_the_row(row):
    for enc in row.encodings:
        for code in _examples(enc):
            for prefix in (b"", b"\x66", b"\x2e", b"\x3e\x66"):
                c = prefix + code
                d = _decode(c)
                if row.name in ("mov_from_cr", "mov_to_cr", "mov_from_dr", "mov_to_dr") and d is None:
                    continue          # CR1/5/6/7 are #UD and capstone refuses them
                assert d is not None, f"{row.name}: {c.hex()} does not decode"
                assert d[2] in row.mnemonics, f"{row.name}: {c.hex()} decodes as {d[2]}"
                if not (0x66 in prefix and enc.operands == "ptr16:32"):   # 66: ptr16:16
                    assert d[1] == len(c), f"{row.name}: {c.hex()} length {d[1]}"
                assert classify_bytes(c) is row, f"{c.hex()} -> {classify_bytes(c)}"


REQUIRED = """cli sti pushfd popfd iretd hlt in out ins outs lgdt lidt lldt ltr sgdt sidt sldt str
smsw lmsw mov_from_cr mov_to_cr mov_from_dr mov_to_dr clts invd wbinvd invlpg rdmsr wrmsr rdtsc
rdtscp rdpmc cpuid lar lsl verr verw mov_from_sreg mov_to_sreg mov_from_cs mov_from_ss mov_to_ss
mov_to_cs push_cs push_ss push_sreg pop_ss pop_sreg call_far jmp_far retf int int3 into sysenter
sysexit""".split()


def test_catalog_covers_issue_list():
    for name in REQUIRED:
        assert by_name(name).name == name


def test_robin_irvine_groups():
    sr = {r.name for r in CATALOG if r.ri_group is RIGroup.SENSITIVE_REGISTER}
    assert sr == {"sgdt", "sidt", "sldt", "smsw", "pushfd", "popfd"}
    ps = {r.name for r in CATALOG if r.ri_group is RIGroup.PROTECTION_SYSTEM}
    for n in ("lar", "lsl", "verr", "verw", "pop_sreg", "push_sreg", "call_far", "jmp_far",
              "int", "retf", "str", "mov_to_sreg", "mov_from_sreg"):
        assert n in ps


def test_fault_facts_match_unicorn_notes():
    # Seen faulting at CPL 1 / IOPL 0 (a note outside the repository,
    # /work/shared/notes/unicorn-x86-facts.md); and silent ones.
    for n in ("cli", "sti", "hlt", "mov_from_cr", "mov_to_cr", "in", "out"):
        assert by_name(n).faults_at_cpl1
    for n in ("pushfd", "popfd", "sgdt", "sidt", "mov_from_cs", "iretd"):
        assert not by_name(n).faults_at_cpl1
    for r in CATALOG:
        # a row the VMM must patch has a routine for the int3 fallback and stub exits
        if r.bt in (catalog.BT.PATCH, catalog.BT.PATCH_PRIVILEGED):
            assert r.emulation, r.name
        # a row emulated on its trap in trap mode has a routine to do it
        assert r.emulation == (r.trap is catalog.Trap.EMULATE or r.bt is catalog.BT.PATCH), r.name
    assert by_name("cli").klass is Klass.INTERRUPT
    assert by_name("in").klass is Klass.IO
    assert by_name("jmp_far").klass is Klass.CONTROL_FLOW


@pytest.mark.parametrize("asm,name", [
    ("mov eax, cr3", "mov_from_cr"), ("mov cr0, eax", "mov_to_cr"), ("mov dr7, ecx", "mov_to_dr"),
    ("in al, 0x60", "in"), ("out dx, eax", "out"), ("rep outsb", "outs"), ("insd", "ins"),
    ("invlpg [eax]", "invlpg"), ("mov ax, cs", "mov_from_cs"), ("mov ss, ax", "mov_to_ss"),
    ("mov word ptr fs:[eax], ss", "mov_from_ss"), ("pop ds", "pop_sreg"), ("push fs", "push_sreg"),
    ("lar eax, ecx", "lar"), ("verw word ptr [ebx]", "verw"), ("retf 8", "retf"),
    ("lcall [eax]", "call_far"), ("ljmp [eax+4]", "jmp_far"),
    ("int 0x80", "int"), ("int3", "int3"), ("rdtscp", "rdtscp"), ("cpuid", "cpuid"),
    ("smsw eax", "smsw"), ("lmsw ax", "lmsw"), ("ltr ax", "ltr"), ("sysexit", "sysexit"),
])
def test_keystone_forms_classify(asm, name):
    code = bytes(KS.asm(asm, 0x1000)[0])
    assert classify_bytes(code) is by_name(name), (asm, code.hex())


@pytest.mark.parametrize("hexcode", [
    "90", "89c0", "8b4508", "e800000000", "ffd0", "ff10", "ff20", "c3", "0f0b", "0f01f8",
    "0f01d0", "0f85000000", "0fb6c0", "6690", "f390", "0f0130"[:0] + "0f01c1", "", "66", "0f",
    "0f01", "8c",
])
def test_not_sensitive(hexcode):
    assert classify_bytes(bytes.fromhex(hexcode)) is None


def test_lookup_helpers():
    assert by_mnemonic("pushf") is by_name("pushfd")
    assert by_mnemonic("insb") is by_name("ins")
    assert by_mnemonic("mov") is None            # several rows: classify the bytes
    assert by_mnemonic("add") is None
    assert classify("cli") is by_name("cli")
    assert classify(b"\x0f\x22\xd8") is by_name("mov_to_cr")
    assert catalog.prefix_info(b"\x66\x2e\x9c") == (2, True, 0x2E)


def test_first_byte_filter_never_hides_a_row():
    for row in CATALOG:
        for enc in row.encodings:
            assert catalog.MAYBE_SENSITIVE_FIRST_BYTE[enc.opcode[0]]


def test_generated_doc_is_fresh():
    path = ROOT / catalog.DOC_PATH
    assert path.exists() and path.read_text() == catalog.render_markdown(), (
        f"{catalog.DOC_PATH} is stale: regenerate it with `cd {ROOT} && "
        f"{catalog.REGEN_COMMAND}`")


def test_routines_and_templates_are_exactly_the_declared_rows():
    from patcher.templates import TEMPLATES
    from runtime.emulation import ROUTINES
    assert set(ROUTINES) == {r.name for r in CATALOG if r.emulation}
    assert set(TEMPLATES) == {r.name for r in CATALOG if r.stub}
    # every template row can fall back to its routine (int3 patch, stub exit)
    assert set(TEMPLATES) <= set(ROUTINES)


def test_registry_check_names_what_disagrees():
    from runtime.emulation import ROUTINES
    catalog.check_registry("routines", ROUTINES, lambda r: r.emulation)   # agrees: no error
    with pytest.raises(AssertionError, match=r"declared but not registered \['hlt'\]"):
        catalog.check_registry("routines", set(ROUTINES) - {"hlt"}, lambda r: r.emulation)
    with pytest.raises(AssertionError, match=r"registered but not declared \['mov'\]"):
        catalog.check_registry("routines", set(ROUTINES) | {"mov"}, lambda r: r.emulation)


def test_registering_an_undeclared_routine_fails_at_import(tmp_path):
    """The import-time check: a module registering a routine no row declares
    cannot be imported (run in a fresh interpreter, the registries are global)."""
    import subprocess
    import sys
    code = ("src = open('runtime/emulation.py').read()\n"
            "src = src.replace('@emulates(\"hlt\")', '@emulates(\"mov\")')\n"
            "exec(compile(src, 'emulation_copy', 'exec'), {'__name__': 'emulation_copy'})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0
    assert "declared but not registered ['hlt']" in r.stderr
    assert "registered but not declared ['mov']" in r.stderr


def test_unsupported_rows_are_documented():
    text = (ROOT / "docs" / "patches.md").read_text()
    for r in CATALOG:
        if r.bt is catalog.BT.UNSUPPORTED:
            assert f"`{r.name}`" in text, r.name
