"""Differential fuzzing: random ring-0 programs under emulate and bt.

The fast subset runs the features where bt agrees with emulate today
(AGREEING) and asserts no guest-visible divergence.  The features left out
diverge for the causes recorded in known_divergences.py (test_known_divergences.py).
"""
import pytest

from bt.fuzz.differential import GUEST_KINDS, compare, run_pair, run_program
from bt.fuzz.generator import FEATURES, from_body, generate
from bt.fuzz.shrink import shrink, shrink_lines, shrink_statements
from bt.machine import MachineConfig
from bt.measure import observe

# Established by campaigns (docs/fidelity.md); every other feature has a known divergence.
AGREEING = ("alu", "eflags", "eflags16", "cli_sti", "tables", "smsw", "selectors", "sreg_read16",
            "seg_load", "seg_load_rpl", "ss_load", "lss", "far", "far_rpl", "iret", "int", "exceptions", "ports",
            "cpuid", "rdtsc", "ctrl_regs", "invlpg", "smc", "smc_loop", "hyper", "sreg_read", "code_read",
            "patch_interior", "ring3", "paging", "gdt_store", "io_flags", "iret_self", "timer", "task", "v86",
            "breakpoints", "atomics")
CI_PROGRAMS = 40
CI_SEED = 20261129


def test_agreeing_features_exist():
    assert set(AGREEING) <= set(FEATURES)


@pytest.mark.parametrize("chunk", range(4))
def test_bt_agrees_with_emulate_on_random_programs(chunk):
    per = CI_PROGRAMS // 4
    bad = []
    for i in range(chunk * per, (chunk + 1) * per):
        prog = generate(CI_SEED + i, 12, AGREEING)
        diff = run_program(prog)
        if diff.guest_visible:
            bad.append(f"seed {prog.seed}: {diff.text()[:300]}")
    assert not bad, "bt diverged (shrink with benchmarks/fuzz_campaign.py --shrink):\n" + "\n".join(bad)


def test_bt_with_one_instruction_walks_agrees_with_emulate(monkeypatch):
    # The programs are far smaller than CSAM's walk bound (runtime/csam.py
    # WALK_BOUND): with a bound of 1 nearly every branch target is deferred and
    # scanned by the block check when it runs (campaign: docs/fidelity.md,
    # "Bounded lazy walks").
    from runtime import csam
    monkeypatch.setattr(csam, "WALK_BOUND", 1)
    bad = []
    for i in range(CI_PROGRAMS // 4):
        prog = generate(CI_SEED + 1000 + i, 12, AGREEING)
        diff = run_program(prog)
        if diff.guest_visible:
            bad.append(f"seed {prog.seed}: {diff.text()[:300]}")
    assert not bad, "bt diverged with WALK_BOUND=1:\n" + "\n".join(bad)


def test_same_mode_twice_is_identical_in_every_kind():
    diff = run_pair(generate(3, 10, AGREEING).image(), "emulate")
    assert diff.kinds == () and not diff.divergent and diff.text() == "identical"


def test_runner_reports_each_kind_that_differs():
    cfg = MachineConfig(mem_mib=8)
    # Same code length (so the IDT and handler addresses match), one instruction more in b.
    a = observe.run(from_body("add ebx, 1\nmov dword ptr [ebp], ebx\nnop\nnop").image(), cfg, "emulate",
                    100_000, keep_ram=True)
    b = observe.run(from_body("add ebx, 2\nmov dword ptr [ebp], ebx\n.byte 0x66, 0x90").image(), cfg,
                    "emulate", 100_000, keep_ram=True)
    diff = compare(a, b)
    assert diff.kinds == ("serial", "regs", "ram", "retired")
    assert diff.details["serial"].startswith("line 2: b'5e6f7082' vs b'5e6f7083'")
    assert diff.details["regs"] == "ebx 0x5e6f7082 vs 0x5e6f7083"
    assert "0x180200" in diff.details["ram"]          # the scratch dword both programs wrote
    assert diff.details["retired"].endswith(f"{a.retired} vs {a.retired - 1}")
    c = observe.run(from_body("s_spin:\njmp s_spin").image(), cfg, "emulate", 3_000)
    ended = compare(a, c)
    assert ended.kinds[0] == "status" and "0 debug-exit vs 124 budget" in ended.details["status"]
    assert ended.unfinished


def test_shrinker_finds_the_one_line_that_matters():
    feats = [f for f in FEATURES if f != "hyper"]
    prog = next(p for p in (generate(seed, 14, feats) for seed in range(100)) if "cpuid" in p.used_features())
    wanted = "cpuid"

    def keep(p):
        return any(wanted == line for s in p.stmts for line in s.body)
    small = shrink_lines(shrink_statements(prog, keep), keep)
    # one of the program's cpuid statements (it may hold several), one line
    assert len(small.stmts) == 1 and small.stmts[0].sid in {s.sid for s in prog.stmts if s.feature == "cpuid"}
    assert small.stmts[0].body == ["cpuid"]


def test_shrinker_reduces_a_real_divergence_to_its_statement():
    # A divergence trap mode keeps by design (issue 15 cause 6: at CPL 1 an RPL-1
    # SS load succeeds where emulate's CPL 0 raises #GP; bt agrees since the fix,
    # regressions.py) buried among ALU statements.  Every trap program differs
    # (the dump shows ring 1's RPL in cs/ss), so the divergence kept is the
    # guest's exception count.
    from bt.fuzz.guest import DIGEST_FIELDS
    line = DIGEST_FIELDS.index("exc_count")

    def exceptions_differ(p) -> bool:
        d = run_program(p, mode="trap")
        return d.reference.serial.split(b"\n")[line] != d.other.serial.split(b"\n")[line]

    prog = generate(4, 6, ["alu"])
    buried = from_body("mov eax, 0x11\nmov ss, ax").stmts[0]
    prog.stmts.insert(3, buried)
    assert exceptions_differ(prog)
    small = shrink(prog, exceptions_differ)
    assert len(small.stmts) == 1 and small.stmts[0].feature == buried.feature != "alu"
