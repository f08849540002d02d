"""The program generator: deterministic per seed, every feature switch emits its
instructions, every program assembles into a complete guest."""
from collections import Counter

import capstone
import pytest

from bt.errors import BadInput
from bt.fuzz import guest as G
from bt.fuzz.generator import FEATURES, from_body, generate, select_features

_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_CS.skipdata = True      # the prelude holds its GDT and pseudo-descriptors inline

# For each feature, mnemonics (as capstone names them) at least one of which its
# statements must contain, so a switch that silently emits nothing is caught.
SIGNATURE = {
    "alu": {"add", "sub", "and", "or", "xor", "adc", "sbb", "cmp", "test", "inc", "dec", "neg", "not",
            "shl", "shr", "sar", "rol", "ror", "rcl", "rcr", "imul", "lea", "bswap", "stc", "clc", "cmc", "cld"},
    "eflags": {"popfd"}, "eflags16": {"pushf", "popf"}, "cli_sti": {"cli", "sti"},
    "tables": {"sgdt", "sidt", "sldt", "str"}, "smsw": {"smsw"},
    "selectors": {"lar", "lsl", "verr", "verw"}, "sreg_read": {"mov", "push"},
    "sreg_read16": {"mov", "push"}, "seg_load": {"mov", "pop"}, "seg_load_rpl": {"mov", "pop"},
    "ss_load": {"mov", "pop"}, "lss": {"lss"}, "accessed": {"lar"}, "far": {"ljmp", "lcall", "retf"},
    "far_rpl": {"ljmp"}, "iret": {"iretd"}, "iret_self": {"iretd"}, "ring3": {"iretd", "int"}, "int": {"int"},
    "exceptions": {"div", "ud2", "int3", "mov"}, "ports": {"in", "out"}, "cpuid": {"cpuid"},
    "rdtsc": {"rdtsc"}, "ctrl_regs": {"mov"}, "invlpg": {"invlpg"}, "smc": {"mov"},
    "smc_rmw": {"xchg", "add", "xor"}, "smc_loop": {"mov"}, "computed": {"ret", "jmp", "call"},
    "fptr": {"call"}, "code_read": {"add"}, "hyper": {"mov", "movsd"},
    "patch_interior": {"aam", "jmp"}, "gdt_store": {"mov"}, "paging": {"invlpg", "mov"},
    "io_flags": {"in", "out"}, "timer": {"out", "sti"}, "task": {"lcall", "ljmp", "call", "jmp"},
    "v86": {"iretd"},
    "breakpoints": {"mov"},
    "atomics": {"cmpxchg8b", "cmpxchg", "xadd", "xchg", "pause"},
}


def _mnemonics(program) -> Counter:
    code = bytes(program.image().segments[0].data)
    return Counter(i.mnemonic.split()[-1] for i in _CS.disasm(code, G.LOAD))


def test_every_feature_has_a_signature():
    assert set(SIGNATURE) == set(FEATURES)


def test_same_seed_same_program_and_different_seeds_differ():
    a, b = generate(42, 15), generate(42, 15)
    assert a.text() == b.text()
    assert generate(43, 15).text() != a.text()


@pytest.mark.parametrize("feature", FEATURES)
def test_feature_switch_emits_its_instructions_and_assembles(feature):
    prog = generate(5, 10, features=[feature])
    assert {s.feature for s in prog.stmts} == {feature}
    body_only = from_body(prog.body_text(), prog.init_regs)
    # What the statements add to the fixed frame (prelude, handlers, epilogue).
    emitted = set(_mnemonics(body_only) - _mnemonics(from_body("nop", prog.init_regs)))
    assert emitted & SIGNATURE[feature], f"{feature}: {sorted(emitted)}"


def test_atomics_emits_every_instruction_it_names_at_every_place():
    """Over a few seeds: each read-modify-write, a lock prefix, both places
    (ring 3 through iretd, paging through the alias) and a flag read after."""
    prog = generate(11, 60, features=["atomics"])
    code = bytes(prog.image().segments[0].data)
    insns = [i for i in _CS.disasm(code, G.LOAD)]
    names = {i.mnemonic.split()[-1] for i in insns}
    assert {"cmpxchg8b", "cmpxchg", "xadd", "xchg", "pause", "pushfd", "iretd"} <= names
    assert any(i.mnemonic.startswith("lock") for i in insns)
    text = prog.text()
    assert "cmpxchg8b qword ptr [0x40000" in text and "mov cr0, eax" in text


def test_exclude_removes_a_feature():
    prog = generate(9, 40, exclude=["alu", "hyper"])
    used = prog.used_features()
    assert "alu" not in used and "hyper" not in used and len(used) > 5


def test_unknown_feature_is_a_one_line_error():
    with pytest.raises(BadInput, match="unknown fuzz feature 'nope'"):
        select_features(["nope"])
    with pytest.raises(BadInput, match="no fuzz feature left"):
        select_features(["alu"], ["alu"])


def test_program_is_a_complete_guest_that_exits_through_the_debug_port():
    from bt.api import run
    res = run(from_body("add eax, 1").image(), "emulate", mem_mib=8, max_instructions=100_000)
    assert (res.exit_status, res.reason) == (0, "debug-exit")
    lines = res.serial.decode().split()
    assert len(lines) == len(G.DIGEST_FIELDS)
    assert int(lines[0], 16) == 0xA1B2C3D5          # FIXED_REGS eax + 1
    assert int(lines[G.DIGEST_FIELDS.index("cs")], 16) == G.KCODE


def test_wild_program_ends_by_the_instruction_budget():
    from bt.api import run
    res = run(from_body("s_spin:\njmp s_spin").image(), "emulate", mem_mib=8, max_instructions=5_000)
    assert res.exit_status == 124


def test_breakpoints_never_enable_a_data_breakpoint():
    """trap and bt model execute breakpoints only (runtime/breakpoints.py), so
    the `breakpoints` feature leaves every data breakpoint (R/W 01, 11)
    disabled, through its DR7 toggles too; execute ones have LEN 00."""
    import re
    kinds = Counter()
    for seed in range(200):
        (stmt,) = generate(seed, 1, features=["breakpoints"]).stmts
        text = "\n".join(stmt.body)
        dr7 = int(re.search(r"mov eax, (0x[0-9a-f]+)\nmov dr7, eax", text).group(1), 16)
        toggle = re.search(r"mov eax, dr7\nxor eax, (0x[0-9a-f]+)", text)
        states = [dr7] + ([dr7 ^ int(toggle.group(1), 16)] if toggle else [])
        for value in states:
            for n in range(4):
                rw_len = (value >> (16 + 4 * n)) & 0xF
                if (value >> (2 * n)) & 3:
                    assert rw_len == 0, (seed, hex(value), n)
                    kinds["enabled"] += 1
                elif rw_len:
                    kinds["data, disabled"] += 1
        kinds["toggled"] += bool(toggle)
    assert min(kinds.values()) > 10, kinds
