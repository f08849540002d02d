"""The fidelity checker: the probes' documented divergences under trap are found and
named (instruction, catalog row, Robin & Irvine group); bt gives none (smc
included); a guest that reads patched code it never wrote is named with the read."""
from __future__ import annotations

import pytest
from capstone import Cs, CS_ARCH_X86, CS_MODE_32

from bt.images import load_image
from bt.machine import MachineConfig
from bt.measure import describe
from bt.measure.fidelity import DIVERGENT, IDENTICAL, TIMING, compare, first_differing_line
from bt.measure.observe import ram_differences, run

CFG = MachineConfig(mem_mib=8)     # the demos live below 2 MiB: small RAM keeps hashing fast


def _img(name):
    return load_image(f"demo:{name}", mem_bytes=CFG.mem_bytes)


# probe -> (instruction text, catalog row, Robin & Irvine group, words in the headline)
TRAP_EXPECTED = {
    # The guest's IF is the real IF (docs/fidelity.md, "IF in the real EFLAGS"):
    # trap's pushfd leaks the real IOPL (1) instead.
    "probe-flags": ("pushfd", "pushfd", "sensitive-register", "leaked the host IOPL"),
    "probe-tables": ("sgdt", "sgdt", "sensitive-register", "sgdt"),
    "probe-segments": ("mov eax, cs", "mov_from_cs", "protection-system", "RPL 1"),
    "probe-protection": ("lar", "lar", "protection-system", "lar"),
}


@pytest.mark.parametrize("probe", ["fnptr", "timer"])
def test_trap_is_identical_where_only_the_if_leaked(probe):
    """fnptr's pushfd and timer's popfd diverged under trap through IF alone
    (a pushfd showing the host's IF 1, a popfd that could not set it): with the
    guest's IF in the real EFLAGS trap agrees with emulate on both."""
    rep = compare(_img(probe), CFG, "trap")
    assert rep.verdict == IDENTICAL, rep.text()


@pytest.mark.parametrize("probe", sorted(TRAP_EXPECTED))
def test_trap_divergence_is_found_and_named(probe):
    text, row, group, words = TRAP_EXPECTED[probe]
    rep = compare(_img(probe), CFG, "trap")
    assert rep.verdict == DIVERGENT and rep.status == 1
    assert any(d["aspect"] == "serial" for d in rep.differences)
    dv = rep.divergence
    assert dv["kind"] == "instruction"
    insn = dv["instruction"]
    assert insn["text"].startswith(text)
    assert insn["catalog"] == row and insn["robin_irvine"] == group
    assert insn["class"] == "sensitive-unprivileged"
    assert words in dv["headline"] and f"{insn['address']:#x}" in dv["headline"]
    # The named instruction really is at that address in the guest image.
    img = _img(probe)
    seg = img.segments[0]
    code = seg.data[insn["address"] - seg.addr:][:15]
    first = next(Cs(CS_ARCH_X86, CS_MODE_32).disasm(code, insn["address"], 1))
    assert first.mnemonic == insn["mnemonic"]
    # Lock-step claim: after count-1 instructions both runs agree, after count they differ.
    n = dv["count"]
    assert run(img, CFG, "emulate", n - 1).key() == run(img, CFG, "trap", n - 1).key()
    assert run(img, CFG, "emulate", n).key() != run(img, CFG, "trap", n).key()


def test_probe_flags_headline_names_the_pushfd_leak():
    rep = compare(_img("probe-flags"), CFG, "trap")
    assert rep.divergence["headline"].startswith("pushfd at 0x1000")
    assert "leaked the host IOPL" in rep.divergence["headline"]
    assert "Robin & Irvine sensitive-register" in rep.text()


@pytest.mark.parametrize("probe", ["probe-tables", "probe-segments", "probe-protection", "fnptr"])
def test_bt_gives_identical(probe):
    rep = compare(_img(probe), CFG, "bt")
    assert rep.verdict == IDENTICAL, rep.text()
    assert rep.status == 0 and rep.differences == []


def test_bt_probe_flags_takes_the_interrupt_where_emulate_does():
    # Both take the waiting tick right after popfd sets IF (docs/fidelity.md,
    # "Exact virtual time"); it used to be timing-only (emulate injected only
    # at a slice's end).
    rep = compare(_img("probe-flags"), CFG, "bt")
    assert rep.verdict == IDENTICAL, rep.text()


def test_bt_smc_is_identical_reads_of_rewritten_code_see_the_guest_bytes():
    rep = compare(_img("smc"), CFG, "bt")
    assert rep.verdict == IDENTICAL, rep.text()


def test_bt_read_of_patched_code_never_written_is_hidden_or_named():
    # Hidden on every page by default (docs/fidelity.md, "Reads of patched code");
    # with hide_patches="written-pages" the guest reads the patch jump on a page
    # it never wrote, and the checker names that read.
    from conftest import raw_guest
    img = raw_guest("mov esp, 0x90000\ncall f\nmov al, byte ptr [f]\nmov dx, 0x3f8\n"
                    "out dx, al\nmov al, 0\nout 0xf4, al\nf: pushfd\npop eax\nnop\nnop\nret\n")
    hidden = compare(img, CFG, "bt")
    # Identical: emulate used to run the block after `out 0xf4` on to f's pushfd
    # before the stop landed (a RAM word below the stack differed); a stop from
    # an I/O hook now lands right after the instruction (runtime/clock.py).
    assert hidden.verdict == IDENTICAL, hidden.text()
    rep = compare(img, MachineConfig(mem_mib=8, hide_patches="written-pages"), "bt")
    assert rep.verdict == DIVERGENT
    dv = rep.divergence
    # named by lock-step: the load, with what it read; the serial window adds the read
    assert dv["kind"] == "instruction"
    assert dv["instruction"]["text"].startswith("mov al, byte ptr [0x")
    assert "eax = 0xe9 under bt, 0x9c under emulate" in dv["headline"]
    assert dv["patched_reads"], rep.text()        # the guest read the patch jump
    assert "read e9" in dv["patched_reads"][0]     # jmp rel32 opcode


def test_identical_runs_under_emulate_twice():
    img = _img("hello")
    a, b = run(img, CFG, "emulate"), run(img, CFG, "emulate")
    assert a.key() == b.key()


def test_ram_differences_and_lines():
    a = bytes(0x3000)
    b = bytearray(a)
    b[0x1004] = 1
    b[0x1006] = 2
    b[0x2fff] = 3
    assert ram_differences(a, bytes(b)) == [(0x1004, 0x1007), (0x2fff, 0x3000)]
    assert first_differing_line(b"a\nb\nc", b"a\nx\nc") == (1, 2)


def test_flag_names_and_selector_effect():
    assert describe.flag_names(0x200) == "IF"
    assert describe.flag_names(0x3200) == "IF/IOPL"
    insn = describe.instruction(bytes.fromhex("8cc8"), 0x1000)     # mov eax, cs
    assert insn["catalog"] == "mov_from_cs" and insn["robin_irvine"] == "protection-system"
    eff = describe.effects(insn, {"eax": (0x8, 0x9)}, [], "trap")
    assert "RPL 1" in eff[0]


def test_bt_run_compare_exit_status(capsys):
    from bt.cli.run import main
    assert main(["demo:probe-segments", "--mem", "8", "--compare", "trap"]) == 1
    out = capsys.readouterr().out
    assert "divergent" in out and "mov eax, cs at 0x" in out and "protection-system" in out
    assert main(["demo:probe-segments", "--mem", "8", "--compare", "bt"]) == 0
    assert "identical" in capsys.readouterr().out
