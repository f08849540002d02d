"""Unicorn 2.1.4 facts behind "the guest's IF in the real EFLAGS" (issue 15's speed
leftover; docs/fidelity.md, "IF in the real EFLAGS"): the guest kernel runs at
CPL 1 with the real IOPL 1, so the CPU's own cli/sti/popfd/iretd handle IF as
they do for the guest at CPL 0 under emulate.  Each fact on a bare engine:

* at CPL 1 with IOPL 1 cli/sti run without a fault and change IF; popfd changes
  IF but never IOPL; pushfd shows the real IOPL (1) and the real IF;
* iretd from CPL 1 to CPL 1 or 3 takes IF from the frame and keeps IOPL;
* at CPL 3 with IOPL 1 cli/sti fault (#GP) and popfd keeps IF silently;
* in/out reach the UC_HOOK_INSN hooks at every CPL whatever the IOPL (Unicorn
  skips the I/O permission check: emulate's guest at CPL 3 does port I/O too);
* the instruction after a native sti at CPL 1 runs as a block of its own with
  HF_INHIBIT_IRQ set, so the clock's window check (runtime/_clock.c) works there
  as under emulate.
"""
import ctypes

import pytest
from unicorn import UC_HOOK_BLOCK, UC_HOOK_INSN, UC_HOOK_INTR
from unicorn import x86_const as X

from bt.machine import ACCESS_CODE0, ACCESS_DATA0, descriptor
from bt.x86 import IF_BIT, IOPL_MASK
from conftest import assemble
from runtime.quirks import calibrate, scratch_engine

GDT = 0x600
# 0x08/0x10 ring-0 code/data, 0x18/0x20 ring-1 code/data, 0x28/0x30 ring-3 code/data
TABLE = {0x08: ACCESS_CODE0, 0x10: ACCESS_DATA0, 0x18: ACCESS_CODE0 | 1 << 5,
         0x20: ACCESS_DATA0 | 1 << 5, 0x28: ACCESS_CODE0 | 3 << 5, 0x30: ACCESS_DATA0 | 3 << 5}
CODE = 0x1100
IOPL1 = 1 << 12


def run(body: str, flags: int, ring: int = 1, faults=False):
    """Enter `ring` by an iretd from CPL 0 with EFLAGS `flags`, run `body` then
    `hlt` (a #GP at CPL 1 and 3: the end); returns (engine, interrupts seen, port accesses seen)."""
    uc = scratch_engine(0x200000, 0x9000)
    raw = bytearray(0x38)
    for sel, acc in TABLE.items():
        raw[sel:sel + 8] = descriptor(0, 0xFFFFF, acc | 1)
    uc.mem_write(GDT, bytes(raw))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, len(raw) - 1, 0))
    cs, ss = (0x19, 0x21) if ring == 1 else (0x2b, 0x33)
    entry = assemble(f"push {ss:#x}\npush 0x8000\npush {flags:#x}\npush {cs:#x}\npush {CODE:#x}\niretd", 0x1000)
    uc.mem_write(0x1000, entry)
    code = assemble(body + "\nhlt", CODE)
    uc.mem_write(CODE, code)
    intr, io = [], []

    def on_intr(uc, intno, _):
        intr.append((intno, uc.reg_read(X.UC_X86_REG_EIP)))
        uc.emu_stop()
    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, _: io.append(("in", port)) or 0, None, 1, 0,
                X.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, value, _: io.append(("out", port)), None, 1, 0,
                X.UC_X86_INS_OUT)
    uc.emu_start(0x1000, CODE + 0x800, count=200)   # the hlt at CPL 1/3 faults: the end
    hlt = CODE + len(code) - 1
    if faults:
        return uc, intr, io
    assert (13, hlt) in intr, "the body did not reach its end"
    return uc, [i for i in intr if i != (13, hlt)], io


def flags(uc) -> int:
    return uc.reg_read(X.UC_X86_REG_EFLAGS)


def test_cli_and_sti_run_natively_at_cpl1_with_iopl1():
    uc, intr, _ = run("cli\nmov eax, 1", IOPL1 | IF_BIT | 2)
    assert not intr and uc.reg_read(X.UC_X86_REG_EAX) == 1
    assert uc.reg_read(X.UC_X86_REG_CS) == 0x19
    assert not flags(uc) & IF_BIT and flags(uc) & IOPL_MASK == IOPL1
    uc, intr, _ = run("sti\nmov eax, 1", IOPL1 | 2)
    assert not intr and flags(uc) & IF_BIT


def test_cli_faults_at_cpl1_with_iopl0():
    """The reason the real IOPL must be 1, not 0 as before."""
    _, intr, _ = run("cli", IF_BIT | 2, faults=True)
    assert intr == [(13, CODE)]


@pytest.mark.parametrize("value", [0x3202, 0x0002, 0x1202, 0x2002])
def test_popfd_at_cpl1_changes_if_never_iopl(value):
    uc, intr, _ = run(f"push {value:#x}\npopfd", IOPL1 | (IF_BIT if value & IF_BIT == 0 else 0) | 2)
    assert not intr
    assert flags(uc) & IF_BIT == value & IF_BIT
    assert flags(uc) & IOPL_MASK == IOPL1


def test_pushfd_at_cpl1_shows_the_real_iopl_and_if():
    uc, _, _ = run("pushfd\npop eax\ncli\npushfd\npop ebx", IOPL1 | IF_BIT | 2)
    assert uc.reg_read(X.UC_X86_REG_EAX) & (IF_BIT | IOPL_MASK) == IF_BIT | IOPL1
    assert uc.reg_read(X.UC_X86_REG_EBX) & (IF_BIT | IOPL_MASK) == IOPL1


@pytest.mark.parametrize("frame", [0x3202, 0x0002, 0x0202, 0x2002])
def test_iretd_from_cpl1_to_cpl1_takes_if_and_keeps_iopl(frame):
    uc, intr, _ = run(f"push {frame:#x}\npush 0x19\nlea eax, [after]\npush eax\niretd\nafter:",
                      IOPL1 | (0 if frame & IF_BIT else IF_BIT) | 2)
    assert not intr and uc.reg_read(X.UC_X86_REG_CS) == 0x19
    assert flags(uc) & IF_BIT == frame & IF_BIT
    assert flags(uc) & IOPL_MASK == IOPL1


@pytest.mark.parametrize("frame", [0x3202, 0x0002])
def test_iretd_from_cpl1_to_cpl3_takes_if_and_keeps_iopl(frame):
    uc, intr, _ = run(f"push 0x33\npush 0x7000\npush {frame:#x}\npush 0x2b\nlea eax, [after]\npush eax\n"
                      "iretd\nafter:\nnop", IOPL1 | (0 if frame & IF_BIT else IF_BIT) | 2)
    assert uc.reg_read(X.UC_X86_REG_CS) == 0x2b
    assert flags(uc) & IF_BIT == frame & IF_BIT
    assert flags(uc) & IOPL_MASK == IOPL1
    assert not intr


@pytest.mark.parametrize("insn", ["cli", "sti"])
def test_cli_sti_fault_at_cpl3_with_iopl1(insn):
    _, intr, _ = run(insn, IOPL1 | IF_BIT | 2, ring=3, faults=True)
    assert intr == [(13, CODE)]


def test_popfd_at_cpl3_with_iopl1_keeps_if_silently():
    uc, intr, _ = run("push 0x3002\npopfd\nnop", IOPL1 | IF_BIT | 2, ring=3)
    assert not intr
    assert flags(uc) & (IF_BIT | IOPL_MASK) == IF_BIT | IOPL1


@pytest.mark.parametrize("ring", [1, 3])
@pytest.mark.parametrize("iopl", [0, IOPL1])
def test_in_out_reach_the_hooks_at_every_cpl_and_iopl(ring, iopl):
    uc, intr, io = run("mov dx, 0x3f8\nin al, dx\nout dx, al\nmov ebx, 7", iopl | 2, ring=ring)
    assert io == [("in", 0x3f8), ("out", 0x3f8)]
    assert uc.reg_read(X.UC_X86_REG_EBX) == 7
    assert not intr


def test_the_instruction_after_a_native_sti_at_cpl1_is_a_block_in_the_shadow():
    """The clock's window check needs, at CPL 1 as at CPL 0, the instruction
    after sti to start a block with HF_INHIBIT_IRQ set (hflags bit 3) and the
    one after it to start a block outside the shadow, IF set."""
    off = calibrate()
    body = "mov ebx, 1\nsti\nmark:\nmov ecx, 2\nmark2:\nmov edx, 3"
    mark = CODE + len(assemble("mov ebx, 1\nsti", CODE))
    mark2 = mark + len(assemble("mov ecx, 2", mark))
    seen = {}

    def on_block(uc, addr, size, _):
        if addr in (mark, mark2) and addr not in seen:
            ctx = uc.context_save()
            raw = ctypes.string_at(ctx.context.value, ctx.size)
            fl = int.from_bytes(raw[off.eflags:off.eflags + 4], "little")
            hf = int.from_bytes(raw[off.hflags:off.hflags + 4], "little")
            seen[addr] = (size, bool(fl & IF_BIT), bool(hf & 8))
    uc = scratch_engine(0x200000, 0x9000)
    raw = bytearray(0x38)
    for sel, acc in TABLE.items():
        raw[sel:sel + 8] = descriptor(0, 0xFFFFF, acc | 1)
    uc.mem_write(GDT, bytes(raw))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, len(raw) - 1, 0))
    uc.mem_write(0x1000, assemble(f"push 0x21\npush 0x8000\npush {IOPL1 | 2:#x}\npush 0x19\n"
                                  f"push {CODE:#x}\niretd", 0x1000))
    code = assemble(body + "\nhlt", CODE)
    uc.mem_write(CODE, code)
    uc.hook_add(UC_HOOK_BLOCK, on_block)
    uc.hook_add(UC_HOOK_INTR, lambda uc, n, _: uc.emu_stop())
    uc.emu_start(0x1000, CODE + len(code) - 1, count=50)
    assert uc.reg_read(X.UC_X86_REG_CS) == 0x19
    assert seen[mark] == (len(assemble("mov ecx, 2", mark)), True, True)
    assert seen[mark2][1:] == (True, False)


def _shadow_blocks(clear: bool):
    """sti; int3 (the VMM's exit for a patched site in sti's shadow); the
    hflags' shadow bit at the next two blocks, optionally cleared by the exit."""
    from runtime.quirks import Quirks
    off = calibrate()
    code = assemble("sti\nint3\nmark:\nmov ecx, 2\nmark2:\nmov edx, 3\nhlt", CODE)
    uc = scratch_engine(0x200000, 0x9000)
    uc.mem_write(CODE, code)
    q = Quirks(uc)
    seen = []

    def on_block(uc, addr, size, _):
        raw = ctypes.string_at(q.env + off.hflags, 4)
        seen.append((addr, bool(int.from_bytes(raw, "little") & 8)))

    def on_intr(uc, n, _):
        if clear:
            q.end_irq_shadow()
    uc.hook_add(UC_HOOK_BLOCK, on_block)
    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(CODE, CODE + len(code) - 1, count=50)
    return [s for s in seen if s[0] > CODE + 1]


def test_an_exit_in_the_sti_shadow_leaves_the_shadow_set_unless_the_vmm_ends_it():
    """Unicorn resets HF_INHIBIT_IRQ at the end of the shadow's block; an exception
    there (int3, a #GP the VMM emulates) skips the reset, and the instruction
    after the exit would run shadowed too: runtime/quirks.py end_irq_shadow."""
    after = CODE + 2
    assert _shadow_blocks(False)[0] == (after, True)
    assert _shadow_blocks(True)[0] == (after, False)


def test_unicorn_keeps_some_msrs_and_drops_the_p6_performance_counters():
    """What emulate's guest reads back after wrmsr, which trap's and bt's
    rdmsr/wrmsr now pass through for the MSRs the VMM does not keep itself
    (runtime/emulation.py VIRTUAL_MSRS): Linux's PMU probe writes 0xabcd to
    MSR 0xc2 and finds 0 (docs/linux.md)."""
    uc = scratch_engine()
    for msr in (0xC1, 0xC2, 0x186):
        uc.msr_write(msr, 0xABCD)
        assert uc.msr_read(msr) == 0
    uc.msr_write(0x277, 0x0007040600070406)        # PAT is kept
    assert uc.msr_read(0x277) == 0x0007040600070406


def test_the_pmu_probe_reads_what_emulate_reads_in_every_mode():
    from conftest import raw_guest, run
    src = ("mov esp, 0x90000\nmov ecx, 0xc2\nmov eax, 0xabcd\nxor edx, edx\nwrmsr\n"
           "xor eax, eax\nrdmsr\nmov esi, eax\nmov ecx, 0x277\nrdmsr\nmov edi, eax\n"
           "mov al, 0\nout 0xf4, al\nhlt\n")
    got = {m: run(raw_guest(src), m)[1] for m in ("emulate", "trap", "bt")}
    assert got["emulate"].regs["esi"] == 0
    for m in ("trap", "bt"):
        assert (got[m].regs["esi"], got[m].regs["edi"]) == (got["emulate"].regs["esi"], got["emulate"].regs["edi"]), m
