"""The patch policy (patcher/policy.py) against small programs: assembled with
Keystone, scanned with scanner.Scanner over the program's bytes, and the policy
asked about one site, as bt mode asks it."""
import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, Ks

from patcher.policy import (Action, Refusal, decide, decide_branch, insn_at, neighbourhood,
                            plan_jump)
from scanner.scan import Scanner

KS = Ks(KS_ARCH_X86, KS_MODE_32)
BASE = 0x100000
NOTHING = lambda addr: None            # noqa: E731  (no patch installed)


def scanned(src: str, at: int = BASE):
    """Assemble `src` at `at`, scan it from `at` (only its own bytes are readable)."""
    code = bytes(KS.asm(src, at)[0])

    def read(addr, n):
        if not at <= addr < at + len(code):
            return None
        return code[addr - at:addr - at + n]

    sc = Scanner(read)
    sc.scan([at], "entry")
    return sc.cfg


def ask(src: str, site_index: int = 0, *, at: int = BASE, covering=NOTHING, **kw):
    """The policy's decision for the `site_index`-th instruction of `src`."""
    cfg = scanned(src, at)
    addr = sorted(a for a, *_ in cfg.instructions())[site_index]
    site = insn_at(cfg, addr)
    return site, decide(site, neighbourhood(cfg, addr, covering), **kw)


def test_jump_covers_the_site_and_enough_instructions_after_it():
    site, d = ask("pushfd; pop eax; nop; nop; nop; nop; hlt")
    assert d.action is Action.JUMP and d.refused is None
    assert [i.mnemonic for i in d.covered] == ["pushfd", "pop", "nop", "nop", "nop"]
    assert d.covered[0] == site and d.end == BASE + 5


def test_a_covered_sensitive_instruction_with_a_template_is_translated_inline():
    _, d = ask("pushfd; cli; popfd; nop; nop; hlt")
    assert d.action is Action.JUMP
    assert [i.mnemonic for i in d.covered] == ["pushfd", "cli", "popfd", "nop", "nop"]


def test_five_bytes_across_a_page_boundary_are_refused():
    # pushfd at 0x100ffe: its jump would span two pages
    _, d = ask("nop; nop; pushfd; nop; nop; nop; nop; hlt", 2, at=BASE + 0xFFC)
    assert (d.action, d.refused) == (Action.INT3, Refusal.PAGE_BOUNDARY)
    assert d.covered[0].addr == BASE + 0xFFE


def test_a_branch_target_inside_the_covered_bytes_is_refused():
    _, d = ask("pushfd; nop; back: nop; nop; nop; dec ecx; jnz back; hlt")
    assert (d.action, d.refused) == (Action.INT3, Refusal.BRANCH_TARGET_INSIDE)


def test_an_exit_point_inside_the_covered_bytes_is_refused():
    _, d = ask("pushfd; ret")
    assert (d.action, d.refused) == (Action.INT3, Refusal.EXIT_INSIDE)


def test_bytes_the_scanner_never_decoded_are_refused():
    # the program ends two bytes after the site: nothing after it was scanned
    _, d = ask("nop; pushfd; nop", 1)
    assert (d.action, d.refused) == (Action.INT3, Refusal.UNSCANNED)


def test_a_site_without_a_template_needs_the_vmm():
    _, d = ask("lar eax, ecx; nop; nop; hlt")
    assert (d.action, d.refused) == (Action.INT3, Refusal.NEEDS_VMM)


def test_a_covered_instruction_that_needs_the_vmm_is_refused():
    _, d = ask("pushfd; int 0x80; nop; nop; hlt")
    assert (d.action, d.refused) == (Action.INT3, Refusal.NEEDS_VMM)
    _, d = ask("pushfd; lgdt [0x100400]; hlt")
    assert (d.action, d.refused) == (Action.INT3, Refusal.NEEDS_VMM)


def test_a_covered_instruction_that_cannot_run_from_the_stub_cache_is_refused():
    _, d = ask("pushfd; loop done; nop; nop; done: hlt")
    assert (d.action, d.refused) == (Action.INT3, Refusal.UNRELOCATABLE)
    _, d = ask("pushfd; div ecx; nop; nop; hlt")
    assert (d.action, d.refused) == (Action.INT3, Refusal.UNRELOCATABLE)


def test_a_site_an_installed_patch_covers_is_left_alone():
    installed = object()
    _, d = ask("pushfd; pop eax; nop; nop; nop; nop; hlt", covering=lambda a: installed)
    assert (d.action, d.refused) == (Action.NONE, Refusal.OVERLAPS_PATCH)


@pytest.mark.parametrize("eager", [True, False])
def test_cli_and_sti_need_nothing(eager):
    # the guest's IF is the real IF (real IOPL 1): they run natively
    for src in ("cli; ret", "sti; pop eax; nop; nop; nop; nop; hlt"):
        for at_fault in (False, True):
            _, d = ask(src, eager_privileged=eager, at_fault=at_fault)
            assert (d.action, d.refused) == (Action.NONE, None), src


def test_a_covered_sti_needs_a_covered_instruction_after_it():
    # the instruction in sti's shadow must run in the stub: with the sti last,
    # the jump back would be the shadow's instruction (docs/fidelity.md, "IF in
    # the real EFLAGS")
    _, d = ask("pushfd; pop eax; nop; sti; nop; hlt")
    assert d.action is Action.JUMP and [i.mnemonic for i in d.covered] == ["pushfd", "pop", "nop", "sti", "nop"]
    _, d = ask("pushfd; sti; pushfd; pop eax; pop eax; hlt")
    assert d.action is Action.JUMP and [i.mnemonic for i in d.covered][:3] == ["pushfd", "sti", "pushfd"]
    _, d = ask("pushfd; pop eax; nop; nop; sti; nop; hlt")
    assert (d.action, d.refused) == (Action.INT3, Refusal.IRQ_SHADOW)


def test_at_a_fault_a_refused_jump_never_becomes_an_int3():
    _, d = ask("iretd", at_fault=True)
    assert (d.action, d.refused) == (Action.TRAP, Refusal.EXIT_INSIDE)
    _, d = ask("iretd")                      # when scanned: an int3 patch (never native)
    assert (d.action, d.refused) == (Action.INT3, Refusal.EXIT_INSIDE)


# Linux's iret_to_self (sync_core): pushfl; pushl %cs; pushl $1f; iret; 1:
# (`push cs` as a byte: Keystone adds a 0x66 prefix)
IRET_TO_SELF = f"pushfd; .byte 0x0e; push {BASE + 8:#x}; iretd"


def test_an_iretd_right_after_the_jumps_bytes_closes_the_patch():
    # alone it has no 5 bytes before its target (exit-point-inside, an int3
    # exit each time); the pushfd's jump covers it instead, writing nothing after it
    _, d = ask(IRET_TO_SELF)
    assert d.action is Action.JUMP
    assert [i.mnemonic for i in d.covered] == ["pushfd", "push", "push", "iretd"]
    assert d.end == BASE + 8
    site, d = ask(IRET_TO_SELF, 3)
    assert site.mnemonic == "iretd" and (d.action, d.refused) == (Action.INT3, Refusal.EXIT_INSIDE)


def test_an_iretd_is_not_added_to_a_jump_across_a_gap_a_page_or_a_branch_target():
    # inside the 5 bytes it still ends the flow too early
    _, d = ask("pushfd; nop; iretd")
    assert (d.action, d.refused) == (Action.INT3, Refusal.EXIT_INSIDE)
    # on the next page: the jump keeps its own instructions only
    _, d = ask("pushfd; push 0x12345678; iretd", at=BASE + 0xFFA)
    assert d.action is Action.JUMP and [i.mnemonic for i in d.covered] == ["pushfd", "push"]
    # a branch target: the same
    site, d = ask("jz back; pushfd; push 0x12345678; back: iretd", 1)
    assert site.mnemonic == "pushfd"
    assert d.action is Action.JUMP and [i.mnemonic for i in d.covered] == ["pushfd", "push"]
    # after an instruction that ends the flow nothing is added
    _, d = ask("pushfd; nop; nop; nop; ret; iretd")
    assert d.action is Action.JUMP and [i.mnemonic for i in d.covered][-1] == "ret"


def test_segment_loads_are_translated():
    # issue 15 cause 6: an RPL-1 selector loads at CPL 1; the stubs check it
    _, d = ask("mov ds, eax; mov es, eax; pop fs; nop; hlt")
    assert d.action is Action.JUMP and [i.mnemonic for i in d.covered] == ["mov", "mov", "pop"]
    _, d = ask("mov ss, ax; mov esp, 0x9000; hlt")       # every SS load exits, from a stub
    assert d.action is Action.JUMP and len(d.covered) == 2
    _, d = ask("mov gs, eax; mov ss, eax; ret")          # so a load before it stays translated
    assert d.action is Action.JUMP and [i.mnemonic for i in d.covered] == ["mov", "mov", "ret"]
    _, d = ask("ljmp 0x8:0x100020")
    assert d.action is Action.JUMP and len(d.covered) == 1


@pytest.mark.parametrize("src,action", [
    ("push fs; hlt", Action.NONE),             # ring compression
    ("lgdt [0x100400]; hlt", Action.TRAP),     # privileged, no patch: emulated on its trap
    ("in al, dx; hlt", Action.TRAP),           # the I/O hooks
    ("int 0x80; hlt", Action.TRAP),            # reflected to the guest IDT
    ("nop; hlt", Action.NONE),                 # not sensitive
])
def test_rows_that_are_never_patched(src, action):
    _, d = ask(src)
    assert (d.action, d.refused) == (action, None)


def test_an_unresolved_indirect_branch_gets_a_guard():
    cfg = scanned("mov eax, 0x100010; jmp eax")
    (u,) = cfg.unresolved_sites()
    assert insn_at(cfg, u).mnemonic == "jmp"
    assert decide_branch(u, NOTHING).action is Action.GUARD
    assert decide_branch(u, lambda a: object()).action is Action.NONE


def test_the_policy_reads_only_what_it_is_given():
    # The same site with a hand-made neighbourhood: no CFG, no engine.
    from patcher.policy import Neighbourhood
    from patcher.templates import Insn
    site = Insn(BASE, 1, "pushfd", "", b"\x9c")
    nops = [Insn(BASE + i, 1, "nop", "", b"\x90") for i in range(1, 6)]
    hood = Neighbourhood(nops, lambda lo, hi: False, NOTHING)
    assert plan_jump(site, hood) == ([site] + nops[:4], None)
    hood = Neighbourhood(nops, lambda lo, hi: lo <= BASE + 3 < hi, NOTHING)
    assert plan_jump(site, hood) == ([], Refusal.BRANCH_TARGET_INSIDE)
