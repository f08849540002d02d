"""Instruction breakpoints (DR0-DR3, DR7): Unicorn arms them for emulate, the
VMM for trap and bt (runtime/breakpoints.py); an Intel CPU suppresses one on
the instruction after MOV SS / POP SS (kvm-unit-tests emulator.flat)."""
import pytest
from unicorn import UC_HOOK_CODE, UC_HOOK_INTR
from unicorn import x86_const as X

from bt import api
from bt.demos import program_image
from bt.fuzz.generator import from_body
from bt.fuzz.guest import DIGEST_FIELDS
from runtime.breakpoints import dr6_hits, exec_breakpoints
from runtime.quirks import scratch_engine

MODES = ("emulate", "trap", "bt")

# A breakpoint on `bp_site` (DR0), run through twice: enabled (DR7 L0), then
# disabled.  The #DB handler counts, keeps DR6 and returns with RF set.  {PRE}
# goes right before the site.
GUEST = """
main:
    call lib_setup_gdt
    call lib_setup_idt
    mov eax, on_db
    mov ecx, 1
    mov edx, 0x8e
    call set_gate
    mov eax, bp_site
    mov dr0, eax
    mov eax, 0x00000401
    mov dr7, eax
    xor esi, esi
again:
    mov eax, ss
    {PRE}
bp_site:
    add esi, 1
    mov eax, 0x400
    mov dr7, eax
    cmp esi, 2
    jne again
    mov ebx, dword ptr [dr6_seen]
    mov eax, dword ptr [count]
    ret
on_db:
    inc dword ptr [count]
    push eax
    mov eax, dr6
    mov dword ptr [dr6_seen], eax
    pop eax
    or dword ptr [esp + 8], 0x10000
    iretd
count:
    .long 0
dr6_seen:
    .long 0
"""


def _run(mode, pre):
    vm = api.make_vm(program_image(GUEST.replace("{PRE}", pre), "breakpoint"), mode, mem_mib=8)
    return vm, vm.run()


@pytest.mark.parametrize("mode", MODES)
def test_an_execute_breakpoint_raises_db_once_with_its_dr6_bit(mode):
    vm, r = _run(mode, "nop")
    assert r.exit_status == 1, (r.reason, r.message)         # once: the second pass is disabled
    assert r.regs["esi"] == 2                                 # the handler's RF let it run
    assert r.regs["ebx"] & 0xF == 0b0001                      # DR6.B0
    assert r.counters["exceptions_delivered"] == {"0x1": 1}


@pytest.mark.parametrize("pre", ["mov ss, eax", ".byte 0x16\n    .byte 0x17"], ids=["mov-ss", "pop-ss"])
@pytest.mark.parametrize("mode", MODES)
def test_the_breakpoint_after_an_ss_load_is_suppressed(mode, pre):
    _, r = _run(mode, pre)
    assert r.exit_status == 0, (r.reason, r.message)
    assert r.regs["esi"] == 2
    assert not r.counters.get("exceptions_delivered")


@pytest.mark.parametrize("pre", ["nop", "mov ss, eax"])
def test_every_mode_ends_as_emulate(pre):
    runs = {m: _run(m, pre)[1] for m in MODES}
    ref = runs["emulate"]
    for r in runs.values():
        assert r.retired == ref.retired and r.regs == ref.regs


def test_bt_hooks_the_stubs_copy_of_a_covered_instruction():
    """`mov eax, ss` is jump-patched and its 5-byte jmp covers the nop and the
    breakpoint's `add`: the stub runs the add, and its copy has the hook."""
    vm, r = _run("bt", "nop")
    seg = vm.image.segments[0]
    site = seg.addr + seg.data.index(bytes.fromhex("83c601"))      # bp_site: add esi, 1
    p = vm.mode.patcher.covering(site)
    assert p.name == "mov_from_ss" and p.kind == "jump" and p.site < site < p.extent
    assert vm.mode.stub_copy(site) is not None
    assert vm.mode.breakpoints.taken == 1 and r.exit_status == 1


def test_which_breakpoints_are_armed():
    drs = [0x1000, 0x2000, 0x3000, 0x1000, 0, 0, 0xFFFF0FF0, 0]
    drs[7] = 0x400 | 0b01 | 0b1000 | 0b100000 | (0b01 << 24)   # L0, G1, G2 (a write breakpoint)
    assert exec_breakpoints(drs) == {0x1000, 0x2000}
    assert dr6_hits(drs, 0x1000) == 0b1001                      # DR3 matches too (not enabled)
    assert dr6_hits(drs, 0x3000) == 0                           # DR2 is a data breakpoint


def _engine_with_db_count(code: bytes):
    uc = scratch_engine(0x200000, 0x1000)
    uc.mem_write(0x1000, code)
    hits = []
    uc.hook_add(UC_HOOK_INTR, lambda uc, intno, _: (hits.append(intno), uc.emu_stop()))
    return uc, hits


def test_fact_reg_write_of_dr7_arms_nothing_mov_dr7_does():
    """Unicorn's reg_write of DR0/DR7 stores the values only (its
    cpu_x86_update_dr7 is not called): why trap and bt arm breakpoints with
    code hooks.  `mov dr7` at CPL 0 arms QEMU's own: why emulate needs none."""
    nops = b"\x90" * 8
    uc, hits = _engine_with_db_count(nops)
    uc.reg_write(X.UC_X86_REG_DR0, 0x1004)
    uc.reg_write(X.UC_X86_REG_DR7, 0x401)
    uc.emu_start(0x1000, 0x1008)
    assert hits == []
    # mov eax, 0x1012; mov dr0, eax; mov eax, 0x401; mov dr7, eax; nop * 8
    code = bytes.fromhex("b812100000" "0f23c0" "b801040000" "0f23f8") + b"\x90" * 8
    uc, hits = _engine_with_db_count(code)
    uc.emu_start(0x1000, 0x1000 + len(code))
    assert hits == [1] and uc.reg_read(X.UC_X86_REG_EIP) == 0x1012


def test_fact_a_block_translated_with_rf_checks_no_breakpoint_and_qemus_db_comes_before_a_hook():
    """QEMU checks instruction breakpoints as it translates a block; one
    translated with EFLAGS.RF set checks none (the CPU: only its first
    instruction's is suppressed), but a code hook there still runs.  In a block
    without RF, QEMU's #DB comes before the hook at the address: why emulate's
    hooks (runtime/breakpoints.py RFBlockBreakpoints) act only where QEMU did not."""
    # DR0 = 0x1018, DR1 = 0x1019 (two nops), both enabled
    code = bytes.fromhex("b818100000" "0f23c0" "b819100000" "0f23c8" "b80f040000" "0f23f8") + b"\x90" * 8
    end = 0x1000 + len(code)
    uc, hits = _engine_with_db_count(code)
    hooked = []
    uc.hook_add(UC_HOOK_CODE, lambda uc, a, s, _: hooked.append(a), None, 0x1019, 0x1019)
    uc.emu_start(0x1000, end)
    assert hits == [1] and uc.reg_read(X.UC_X86_REG_EIP) == 0x1018
    assert uc.reg_read(X.UC_X86_REG_DR6) & 0xF == 0b0001
    uc.reg_write(X.UC_X86_REG_DR6, 0xFFFF0FF0)
    uc.reg_write(X.UC_X86_REG_EFLAGS, uc.reg_read(X.UC_X86_REG_EFLAGS) | 0x10000)
    uc.emu_start(0x1018, end)           # one block from 0x1018, RF set: DR1 at 0x1019 not checked
    assert hits == [1] and hooked == [0x1019] and uc.reg_read(X.UC_X86_REG_EIP) == end
    assert uc.reg_read(X.UC_X86_REG_DR6) == 0xFFFF0FF0     # nor DR0's at 0x1018: DR6 untouched
    uc.reg_write(X.UC_X86_REG_EFLAGS, 2)
    uc.emu_start(0x1019, end)           # without RF: QEMU's #DB, the hook never ran
    assert hits == [1, 1] and hooked == [0x1019] and uc.reg_read(X.UC_X86_REG_EIP) == 0x1019


# Two breakpoints on consecutive instructions of one block: the handler's RF
# covers only the first, so the second raises #DB too (fuzzer program seed
# 2121006366, shrunk; emulate took one #DB before RFBlockBreakpoints).
TWO_IN_A_BLOCK = """
main:
    call lib_setup_gdt
    call lib_setup_idt
    mov eax, on_db
    mov ecx, 1
    mov edx, 0x8e
    call set_gate
    mov eax, first
    mov dr0, eax
    mov eax, second
    mov dr2, eax
    mov eax, 0x412
    mov dr7, eax
    xor esi, esi
    push 7
first:
    pop ebx
second:
    add esi, 1
    mov eax, 0x400
    mov dr7, eax
    mov eax, dword ptr [count]
    ret
on_db:
    inc dword ptr [count]
    or dword ptr [esp + 8], 0x10000
    iretd
count:
    .long 0
"""


@pytest.mark.parametrize("mode", MODES)
def test_the_handlers_rf_covers_one_instruction_not_its_block(mode):
    vm = api.make_vm(program_image(TWO_IN_A_BLOCK, "breakpoint"), mode, mem_mib=8)
    r = vm.run()
    assert r.exit_status == 2, (r.reason, r.message)
    assert r.regs["esi"] == 1 and r.regs["ebx"] == 7


@pytest.mark.parametrize("mode", MODES)
def test_a_task_switch_clears_the_local_enables_and_disarms_them(mode):
    """DR0 on the instruction after a far call to another task and back,
    enabled by L0 and G1 (DR1 at the same address): the switch clears L0-L3,
    so DR7 reads 0x408 and only DR1's breakpoint fires -- once."""
    body = ("mov eax, s_bp\nmov dr0, eax\nmov dr1, eax\nmov eax, 0x40d\nmov dr7, eax\n"
            "mov dword ptr [0x12120], s_t\nmov dword ptr [0x12138], 0x78000\n"
            "mov dword ptr [0x1214c], 0x8\nmov dword ptr [0x12150], 0x10\n"
            ".byte 0x9a\n.long 0\n.word 0x50\ns_bp:\nmov ebx, dr7\n# out of line:\ns_t:\niretd")
    r = api.run(from_body(body).image(), mode, mem_mib=8, max_instructions=100_000)
    assert (r.exit_status, r.reason) == (0, "debug-exit")
    fields = dict(zip(DIGEST_FIELDS, r.serial.decode().split()))
    assert int(fields["ebx"], 16) == 0x408
    assert int(fields["db_count"], 16) == 1


def test_a_slice_ending_at_a_breakpoint_ends_there_in_every_mode():
    """A budget that ends right before the breakpoint's instruction: the clock
    re-runs the block with a Unicorn exit there, but QEMU ends a block at an
    instruction breakpoint before it checks the exit, so under emulate the
    re-run used to stop before the same block forever.  Every budget around
    the breakpoint (and through its handler) ends the run there in every mode,
    bt with emulate's registers (trap shows its CPL 1 in pushfd and ss)."""
    from bt.fuzz.differential import observe_run
    from bt.machine import MachineConfig
    image = program_image(GUEST.replace("{PRE}", "pushfd\n    pop edx"), "breakpoint")
    full = api.run(image, "emulate", mem_mib=8)
    assert full.exit_status == 1
    for budget in range(full.retired - 48, full.retired - 4):
        ends = {m: observe_run(image, MachineConfig(mem_mib=8), m, budget, wall_limit=5.0) for m in MODES}
        for m, o in ends.items():
            assert (o.exit_status, o.retired) == (124, budget), (m, budget, o.reason)
        assert ends["bt"].regs == ends["emulate"].regs, budget


def test_the_rf_suppressed_breakpoint_leaves_dr6_as_the_handler_left_it():
    """The fuzz frame's #DB handler clears DR6; the breakpoint's instruction
    then runs with RF, which the CPU (and QEMU, fact above) treats as no
    breakpoint at all: DR6 keeps no B bit, in every mode."""
    body = "mov eax, s_bp\nmov dr0, eax\nmov eax, 0x401\nmov dr7, eax\ns_bp:\nnop\nmov esi, dr6"
    seen = {}
    for mode in MODES:
        r = api.run(from_body(body).image(), mode, mem_mib=8, max_instructions=100_000)
        fields = dict(zip(DIGEST_FIELDS, r.serial.decode().split()))
        assert int(fields["db_count"], 16) == 1
        seen[mode] = int(fields["esi"], 16)
    assert seen["emulate"] & 0xF == 0 and set(seen.values()) == {seen["emulate"]}, seen
