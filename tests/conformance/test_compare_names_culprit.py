"""`bt-run --compare bt` names the first divergent instruction (issue 15) by
lock-step: after n guest instructions both runs must be in the same state
(registers, flags, selectors, guest RAM with patches hidden, serial output,
bt/measure/fidelity.py).  Each case takes a fixed reproducer
(regressions.py), reverts its fix with a monkeypatch, and checks that the
checker names the instruction the cause lives in."""
import pytest

from bt.fuzz.generator import from_body
from bt.machine import MachineConfig
from bt.measure import fidelity
from patcher import templates
from regressions import FIXED
from runtime import csam

BY_NAME = {e["name"]: e for e in FIXED}


def _old_smsw(s, i):
    # smsw r32 writing the low word only (Unicorn's own smsw, which the smsw
    # template copied until emulate completed it: runtime/smswfix.py).  Cause
    # 4's original bug, the zero-extended word, equals the whole CR0 while
    # CR0's high word is 0, as in this reproducer.
    op = i.op_str.strip()
    return templates._word_source(s, i, f"{s.addr('cr0'):#x}") if "[" in op else \
        f"mov {op[-2:]}, word ptr [{s.addr('cr0'):#x}]"


def _old_mov_from_seg(s, i):
    # before cause 3's fix: mov r16, cs/ss zero-extended into the 32-bit register
    dst, seg = [x.strip() for x in i.op_str.split(",")]
    reg = dst if len(dst) == 3 else "e" + dst
    return templates._guest_view(reg, seg, s)


def _no_interior_bytes(monkeypatch):
    # before causes 11/12's fix: the block check did not know the bytes a jump
    # patch covers (the patch sites stay marked: the clock weighs their jmp 0)
    real = csam.CSAM._patches_changed

    def changed(self, lo, hi):
        real(self, lo, hi)
        for page, table in list(self._interior.items()):
            t = bytearray(b if b != 1 else 0 for b in table)
            self._interior[page] = t
            self.clock.c.set_page(csam.INTERIOR, page, t)
    monkeypatch.setattr(csam.CSAM, "_patches_changed", changed)


# reproducer -> (revert, config options that restore the old behaviour, named instruction's text, words in the report)
CASES = {
    "smsw-r32-writes-32-bits": (
        lambda mp: mp.setitem(templates.TEMPLATES, "smsw", _old_smsw), {}, "smsw esi",
        ["esi", "stub of the smsw patch"]),
    "mov-r16-cs-zero-extends": (
        lambda mp: mp.setitem(templates.TEMPLATES, "mov_from_cs", _old_mov_from_seg), {}, "mov bx, cs",
        ["ebx", "stub of the mov_from_cs patch"]),
    "computed-jump-to-second-covered-insn": (
        _no_interior_bytes, {}, "inc ecx", ["the CPU ran patch bytes"]),
    "code-checksum-sees-patches": (
        lambda mp: None, {"hide_patches": "written-pages"}, "add edx, dword ptr [esi]", ["edx"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_compare_names_the_culprit_with_the_fix_reverted(name, monkeypatch):
    revert, options, text, words = CASES[name]
    entry = BY_NAME[name]
    image = from_body(entry["body"], entry.get("regs")).image()
    # The hypervisor area where the reproducers were recorded: with a fix
    # reverted, what the CPU runs inside a patch jump's displacement depends
    # on the base (at today's default, 0xFE800000, the computed jump's bytes
    # hold `73 FE`, jae to itself, and the bt run never ends).
    base = {"hyper_base": 0xFF000000}
    assert fidelity.compare(image, MachineConfig(mem_mib=8, **base), "bt").verdict == fidelity.IDENTICAL
    revert(monkeypatch)             # (or the option that brings the old behaviour back)
    cfg = MachineConfig(mem_mib=8, **base, **options)
    rep = fidelity.compare(image, cfg, "bt")
    assert rep.verdict == fidelity.DIVERGENT, rep.text()
    dv = rep.divergence
    assert dv["kind"] == "instruction", rep.text()
    assert dv["instruction"]["text"] == text, rep.text()
    report = rep.text()
    assert all(w in report for w in words), report
    # the lock-step claim: equal after count-1 instructions, different after count
    from bt.measure.observe import run
    n = dv["count"]
    assert run(image, cfg, "emulate", n - 1).key() == run(image, cfg, "bt", n - 1).key()
    assert run(image, cfg, "emulate", n).key() != run(image, cfg, "bt", n).key()


def test_a_count_that_differs_is_reported():
    """A run whose retired counts differ is not 'identical' (issue 15: it was)."""
    from bt.measure.observe import run
    image = from_body("cpuid").image()
    cfg = MachineConfig(mem_mib=8)
    ref, other = run(image, cfg, "emulate", keep_ram=True), run(image, cfg, "bt", keep_ram=True)
    other.retired += 1
    rep = fidelity.compare(image, cfg, "bt", locate=False, reference=ref, other=other)
    assert rep.verdict == fidelity.DIVERGENT
    assert [d["aspect"] for d in rep.differences] == ["retired"]
