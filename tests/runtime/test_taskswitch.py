"""Hardware task switches (runtime/taskswitch.py) in small guests, every mode.

Task A is the demos' TSS (selector 0x28 at 0x12000, loaded with ltr); task B
a second TSS (selector 0x38 at 0x14000); selector 0x40 is a task gate to B; 0x48 a conforming DPL-0 code segment.
Each scenario records what task B saw in RES (0x15000...) and task A prints
the words, the TSSs' saved fields and the busy bits on the serial line at the
end, so the modes are compared on what the guest itself observes: far call
and iret through the back link (NT), far jmp there and back, a far jmp through
a task gate, an exception through an IDT task gate with its error code on the
new task's stack, a busy TSS refused with #GP.
"""
import re

import pytest

from bt.demos import program_image
from bt.machine import MachineConfig
from runtime.vm import VM

MODES = ("emulate", "trap", "bt")
TSS_A, TSS_B, RES = 0x12000, 0x14000, 0x15000
SEL_A, SEL_B, SEL_GATE = 0x28, 0x38, 0x40
SEL_CONFORMING = 0x48         # a conforming ring-0 code segment

# What every guest reports at the end (name, address of a dword).
SLOTS = [("r0", RES), ("r1", RES + 4), ("r2", RES + 8), ("r3", RES + 12), ("r4", RES + 16),
         ("a_eip", TSS_A + 0x20), ("a_eflags", TSS_A + 0x24), ("a_ebx", TSS_A + 0x34), ("a_cs", TSS_A + 0x4C),
         ("b_eip", TSS_B + 0x20), ("b_link", TSS_B), ("gdt_a", 0x10000 + SEL_A + 4),
         ("gdt_b", 0x10000 + SEL_B + 4)]


def _far(op: int, sel: int) -> str:
    """A far jmp (0xEA) / call (0x9A) to sel:0 (Keystone refuses the form)."""
    return f"    .byte {op:#x}\n    .long 0\n    .word {sel:#x}\n"


def _image(body: str, task_b: str, handlers: str = ""):
    reports = "".join(f"""
    mov esi, name_{n}
    mov eax, dword ptr [{a:#x}]
    call report""" for n, a in SLOTS)
    names = "".join(f'name_{n}:\n    .asciz "{n}"\n' for n, _ in SLOTS)
    main = f"""
main:
    call lib_setup_gdt
    call lib_setup_idt
    mov dword ptr [0x10000 + {SEL_B:#x}], 0x40000067
    mov dword ptr [0x10000 + {SEL_B + 4:#x}], 0x00008901
    mov dword ptr [0x10000 + {SEL_GATE:#x}], {SEL_B << 16:#x}
    mov dword ptr [0x10000 + {SEL_GATE + 4:#x}], 0x00008500
    mov dword ptr [0x10000 + {SEL_CONFORMING:#x}], 0x0000ffff
    mov dword ptr [0x10000 + {SEL_CONFORMING + 4:#x}], 0x00cf9f00
    .byte 0x0f, 0x01, 0x15
    .long ts_gdtr
    mov ax, {SEL_A:#x}
    ltr ax
    mov edi, {TSS_B:#x}
    xor eax, eax
    mov ecx, 26
    .byte 0xf3, 0xab
    mov edi, {RES:#x}
    mov ecx, 8
    .byte 0xf3, 0xab
    mov dword ptr [{TSS_B + 0x20:#x}], task_b
    mov dword ptr [{TSS_B + 0x24:#x}], 2
    mov dword ptr [{TSS_B + 0x38:#x}], 0x80000
    mov dword ptr [{TSS_B + 0x4C:#x}], 0x08
    mov dword ptr [{TSS_B + 0x48:#x}], 0x10
    mov dword ptr [{TSS_B + 0x50:#x}], 0x10
    mov dword ptr [{TSS_B + 0x54:#x}], 0x10
    mov dword ptr [{TSS_B + 0x58:#x}], 0x10
    mov dword ptr [{TSS_B + 0x5C:#x}], 0x10
    mov ebx, 0xA11CE
{body}
    mov eax, cr0
    and eax, 8
    mov dword ptr [{RES + 16:#x}], eax
{reports}
    xor eax, eax
    ret
task_b:
{task_b}
{handlers}
ts_gdtr:
    .word 0x4f
    .long 0x10000
{names}
"""
    return program_image(main, "taskswitch")


def _run(image, mode: str):
    r = VM(image, MachineConfig(mode=mode, mem_mib=8), stdout=None).run()
    assert r.exit_status == 0, (mode, r.reason, r.message, r.serial[-300:])
    return r


def _seen(r) -> dict:
    return {k: int(v, 16) for k, v in re.findall(rb"(\w+): 0x([0-9a-f]+)", r.serial)
            for k, v in [(k.decode(), v.decode())]}


# Task B, called: NT in its EFLAGS, its back link, a mark; then iret back to A.
CALLED_B = f"""
    pushfd
    pop eax
    and eax, 0x4000
    mov dword ptr [{RES:#x}], eax
    movzx eax, word ptr [{TSS_B:#x}]
    mov dword ptr [{RES + 4:#x}], eax
    mov dword ptr [{RES + 8:#x}], ebx
    mov dword ptr [{RES + 12:#x}], 0xB0B
    iretd
    jmp task_b
"""


def _check_call(seen):
    assert seen["r0"] == 0x4000                     # NT set in the called task
    assert seen["r1"] == SEL_A                      # back link = the caller's TSS
    assert seen["r2"] == 0                          # EBX from B's TSS, not A's
    assert seen["r3"] == 0xB0B
    assert seen["r4"] == 8                          # CR0.TS set by the switch
    assert seen["a_ebx"] == 0xA11CE                 # A's registers saved in its TSS
    assert seen["a_cs"] == 0x08
    assert not seen["a_eflags"] & 0x4000            # the iret cleared A's saved NT
    assert seen["gdt_a"] >> 8 & 0xF == 0xB          # A busy again (it never stopped being)
    assert seen["gdt_b"] >> 8 & 0xF == 0x9          # B free after its iret
    assert seen["b_link"] == SEL_A


CALL = _far(0x9A, SEL_B) + "after_call:\n    nop\n"
CALL_GATE = _far(0x9A, SEL_GATE) + "after_call:\n    nop\n"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("body", [CALL, CALL_GATE], ids=["tss", "task-gate"])
def test_far_call_to_a_task_and_iret_back_through_the_link(mode, body):
    r = _run(_image(body, CALLED_B), mode)
    seen = _seen(r)
    _check_call(seen)
    assert seen["b_eip"] > seen["a_eip"]            # B saved past its iretd (B's code is after main)


# Task B, jumped to: no NT, no link; jumps back to A (A's saved EIP: after the jmp).
JUMPED_B = f"""
    pushfd
    pop eax
    and eax, 0x4000
    mov dword ptr [{RES:#x}], eax
    mov dword ptr [{RES + 12:#x}], 0xB0B
""" + _far(0xEA, SEL_A) + "    jmp task_b\n"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sel", [SEL_B, SEL_GATE], ids=["tss", "task-gate"])
def test_far_jmp_to_a_task_and_back(mode, sel):
    r = _run(_image(_far(0xEA, sel), JUMPED_B), mode)
    seen = _seen(r)
    assert seen["r0"] == 0 and seen["r3"] == 0xB0B and seen["b_link"] == 0
    assert seen["gdt_a"] >> 8 & 0xF == 0xB and seen["gdt_b"] >> 8 & 0xF == 0x9
    assert seen["a_ebx"] == 0xA11CE and seen["r4"] == 8


# An exception through an IDT task gate: #GP from `mov es, eax` with a selector
# past the GDT's limit; B finds the error code on its stack, moves A's saved EIP
# past the 2-byte instruction and returns.
GP_B = f"""
    pop eax
    mov dword ptr [{RES:#x}], eax
    mov dword ptr [{RES + 4:#x}], esp
    movzx eax, word ptr [{TSS_B:#x}]
    mov dword ptr [{RES + 8:#x}], eax
    mov dword ptr [{RES + 12:#x}], 0xB0B
    add dword ptr [{TSS_A + 0x20:#x}], 2
    iretd
    jmp task_b
"""
GP_BODY = f"""
    mov dword ptr [{0x11000 + 13 * 8:#x}], {SEL_B << 16:#x}
    mov dword ptr [{0x11000 + 13 * 8 + 4:#x}], 0x8500
    mov eax, 0x1234
    mov es, eax
    mov eax, 0x10
    mov es, eax
"""


@pytest.mark.parametrize("mode", MODES)
def test_an_exception_through_a_task_gate_pushes_its_error_code_on_the_new_stack(mode):
    r = _run(_image(GP_BODY, GP_B), mode)
    seen = _seen(r)
    assert seen["r0"] == 0x1234                     # #GP(selector): TI kept, RPL 0
    assert seen["r1"] == 0x80000                    # the error code was B's only push
    assert seen["r2"] == SEL_A and seen["r3"] == 0xB0B
    assert seen["gdt_b"] >> 8 & 0xF == 0x9
    assert r.counters["exceptions_delivered"].get("0xd") == 1


# `int 0x40` through a task gate to A's own TSS, which is busy: #GP(0x28), the
# handler (an interrupt gate) records it and skips the int.
BUSY_BODY = f"""
    mov dword ptr [{0x11000 + 0x40 * 8:#x}], {SEL_A << 16:#x}
    mov dword ptr [{0x11000 + 0x40 * 8 + 4:#x}], 0x8500
    mov ecx, 13
    mov eax, gp_handler
    mov edx, 0x8e
    call set_gate
    int 0x40
"""
GP_HANDLER = f"""
gp_handler:
    pop eax
    mov dword ptr [{RES:#x}], eax
    add dword ptr [esp], 2
    iretd
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_busy_tss_is_refused_with_gp(mode):
    r = _run(_image(BUSY_BODY, "    jmp task_b\n", GP_HANDLER), mode)
    seen = _seen(r)
    assert seen["r0"] == SEL_A                      # #GP(TSS selector), EXT clear for int n
    assert seen["r4"] == 0                          # no switch happened
    assert "task_switches" not in r.extra


@pytest.mark.parametrize("body, b, h", [(CALL, CALLED_B, ""), (_far(0xEA, SEL_GATE), JUMPED_B, ""),
                                        (GP_BODY, GP_B, ""), (BUSY_BODY, "    jmp task_b\n", GP_HANDLER)],
                         ids=["call", "jmp-gate", "exception", "busy"])
def test_every_mode_sees_the_same(body, b, h):
    image = _image(body, b, h)
    rs = {m: _run(image, m) for m in MODES}
    assert len({r.serial for r in rs.values()}) == 1, {m: r.serial for m, r in rs.items()}
    assert len({r.retired for r in rs.values()}) == 1, {m: r.retired for m, r in rs.items()}


def test_unicorn_switches_tasks_itself_but_refuses_a_conforming_cs_below_rpl():
    """Facts: under emulate Unicorn 2.1.4 performs a far call/jmp to a TSS at
    CPL 0 itself (its QEMU's switch_tss): the VMM does none of them; it refuses
    a busy TSS with #GP(selector) as the SDM does (its switch on the
    descriptor type has no case for a busy TSS); but it loads the new task's
    CS with QEMU's rule DPL == RPL even for a conforming segment, where the SDM
    asks DPL <= RPL: #TS(CS) (kvm-unit-tests taskswitch2 "lcall with cs.rpl !=
    cs.dpl").  trap and bt follow the SDM there (runtime/taskswitch.py)."""
    r = _run(_image(CALL, CALLED_B), "emulate")
    _check_call(_seen(r))
    assert "task_switches" not in r.extra            # none was the VMM's
    r = VM(_image(USER_BODY, USER_B), MachineConfig(mode="emulate", mem_mib=8), stdout=None).run()
    # #TS(CS) in the new task at CPL 3, whose TSS has no ring-0 stack: a triple fault
    assert r.counters["exceptions_delivered"].get("0xa") == 1 and r.reason.value == "triple-fault"


@pytest.mark.parametrize("mode", MODES)
def test_a_far_jmp_to_the_busy_running_task_is_refused(mode):
    body = f"""
    mov ecx, 13
    mov eax, gp_handler_far
    mov edx, 0x8e
    call set_gate
""" + _far(0xEA, SEL_A)
    handler = f"""
gp_handler_far:
    pop eax
    mov dword ptr [{RES:#x}], eax
    add dword ptr [esp], 7
    iretd
"""
    r = _run(_image(body, "    jmp task_b\n", handler), mode)
    seen = _seen(r)
    assert seen["r0"] == SEL_A and seen["r4"] == 0
    assert "task_switches" not in r.extra


# A task whose CS is the conforming DPL-0 segment with RPL 3 runs at CPL 3
# (kvm-unit-tests taskswitch2 "lcall with cs.rpl != cs.dpl"): DPL <= RPL is
# what the SDM asks of a conforming CS; its iret (NT=1, at CPL 3) returns to A.
USER_B = f"""
    mov eax, cs
    mov dword ptr [{RES:#x}], eax
    mov dword ptr [{RES + 12:#x}], 0xB0B
    iretd
    jmp task_b
"""
USER_BODY = f"""
    mov dword ptr [{TSS_B + 0x4C:#x}], {SEL_CONFORMING | 3:#x}
    mov dword ptr [{TSS_B + 0x48:#x}], 0x23
    mov dword ptr [{TSS_B + 0x50:#x}], 0x23
    mov dword ptr [{TSS_B + 0x54:#x}], 0x23
    mov dword ptr [{TSS_B + 0x58:#x}], 0x23
    mov dword ptr [{TSS_B + 0x5C:#x}], 0x23
    mov dword ptr [{TSS_B + 0x24:#x}], 0x3002
""" + CALL


@pytest.mark.parametrize("mode", ["trap", "bt"])        # emulate: Unicorn's rule, the fact test above
def test_a_call_to_a_task_with_a_conforming_cs_at_ring_3(mode):
    r = _run(_image(USER_BODY, USER_B), mode)
    seen = _seen(r)
    assert seen["r0"] & 0xFFFF == SEL_CONFORMING | 3 and seen["r3"] == 0xB0B
    assert seen["gdt_b"] >> 8 & 0xF == 0x9 and seen["a_cs"] == 0x08


def test_the_vmm_switches_for_an_idt_task_gate():
    r = _run(_image(GP_BODY, GP_B), "emulate")
    assert r.extra["task_switches"] == {"call": 1}     # the #GP; B's iret is Unicorn's


# Task B's stack holds a valid kernel iret frame (to `b_wrong`), built as
# Linux's iret_to_self builds it (pushfd; push cs; push target; iretd: bt
# closes the pushfd's jump patch with its iretd stub): with NT=1 the iret
# ignores the frame and returns to A; bt's stub must not pop it.
FRAMED_B = f"""
    mov dword ptr [{RES + 12:#x}], 0xB0B
    pushfd
    .byte 0x0e
    push dword ptr [b_wrong_ptr]
    iretd
    jmp task_b
b_wrong:
    mov dword ptr [{RES + 12:#x}], 0xBAD
    iretd
b_wrong_ptr:
    .long b_wrong
"""


@pytest.mark.parametrize("mode", MODES)
def test_an_iret_with_nt_ignores_the_frame_on_the_stack(mode):
    r = _run(_image(CALL, FRAMED_B), mode)
    seen = _seen(r)
    assert seen["r3"] == 0xB0B and seen["gdt_b"] >> 8 & 0xF == 0x9
    if mode == "bt":
        # the pushfd's jump patch closed by the iretd's stub, which exited
        assert r.extra["patches"]["installed"].get("pushfd") == 1 and r.counters["stub_exits"]["emulate"] >= 1


# `str` in each task: the TR a task switch loaded.  Under trap `str` runs
# natively at CPL 1 and shows the real TR (the VMM's TSS, selector 0): the
# documented trap hole (tests/runtime/test_modes.py TRAP_LEAKS); bt patches it.
STR_B = f"""
    str eax
    mov dword ptr [{RES:#x}], eax
    iretd
    jmp task_b
"""
STR_BODY = CALL + f"""
    str eax
    mov dword ptr [{RES + 4:#x}], eax
"""


@pytest.mark.parametrize("mode", MODES)
def test_str_names_the_current_task(mode):
    seen = _seen(_run(_image(STR_BODY, STR_B), mode))
    want = (0, 0) if mode == "trap" else (SEL_B, SEL_A)
    assert (seen["r0"] & 0xFFFF, seen["r1"] & 0xFFFF) == want


# NMIs through an IDT task gate (kvm-unit-tests taskswitch2 "NMI external"):
# B counts its runs; its iret (NT=1) ends NMI blocking, so the second NMI,
# sent after the first returned, is taken too.
APIC_ICR_LO, SELF_NMI = 0xFEE00300, 0x400
NMI_B = f"""
    inc dword ptr [{RES + 12:#x}]
    iretd
    jmp task_b
"""
NMI_BODY = f"""
    mov dword ptr [{0x11000 + 2 * 8:#x}], {SEL_B << 16:#x}
    mov dword ptr [{0x11000 + 2 * 8 + 4:#x}], 0x8500
    mov dword ptr [{APIC_ICR_LO:#x}], {SELF_NMI:#x}
    nop
    mov dword ptr [{APIC_ICR_LO:#x}], {SELF_NMI:#x}
    nop
"""


@pytest.mark.parametrize("mode", MODES)
def test_nmis_through_a_task_gate_end_blocking_at_the_tasks_iret(mode):
    r = _run(_image(NMI_BODY, NMI_B), mode)
    assert _seen(r)["r3"] == 2
    assert r.extra["nmi"]["taken"] == 2 and r.extra["nmi"]["unblocks"] == 2


# A DPL-3 TSS called from ring 0: under trap and bt the shadow GDT holds it
# with DPL 0 (runtime/trap.py `_compressed_access`), so the call faults at CPL 1
# and the VMM switches: the CPU's own switch would save into the VMM's TSS.
DPL3_BODY = f"""
    mov byte ptr [0x10000 + {SEL_B + 5:#x}], 0xe9
""" + CALL


@pytest.mark.parametrize("mode", MODES)
def test_a_call_to_a_dpl3_tss(mode):
    seen = _seen(_run(_image(DPL3_BODY, CALLED_B), mode))
    _check_call({**seen, "gdt_b": seen["gdt_b"] & ~0x6000})
    assert seen["gdt_b"] >> 13 & 3 == 3


# A bad new TSS behind a task gate, reached by `int 0x40`: the switch faults
# before anything changes, the fault's frame holds the `int` itself (its
# handler skips it) and its error code names the TSS (EXT clear: int n).
def _bad_tss_body(patch: str, vector: int) -> str:
    return f"""
    {patch}
    mov dword ptr [{0x11000 + 0x40 * 8:#x}], {SEL_B << 16:#x}
    mov dword ptr [{0x11000 + 0x40 * 8 + 4:#x}], 0x8500
    mov ecx, {vector}
    mov eax, gp_handler
    mov edx, 0x8e
    call set_gate
    int 0x40
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("patch, vector", [
    (f"mov byte ptr [0x10000 + {SEL_B:#x}], 0x50", 10),       # limit below 103: #TS
    (f"mov byte ptr [0x10000 + {SEL_B + 5:#x}], 0x09", 11),   # not present: #NP
], ids=["short-limit", "not-present"])
def test_a_bad_tss_behind_a_task_gate_faults_before_the_switch(mode, patch, vector):
    r = _run(_image(_bad_tss_body(patch, vector), "    jmp task_b\n", GP_HANDLER), mode)
    seen = _seen(r)
    assert seen["r0"] == SEL_B and seen["r4"] == 0     # the handler is at `vector` only (else status 3)
    assert "task_switches" not in r.extra


# Ring 3 calls a DPL-3 TSS (B, a ring-0 task); B's iret returns to ring 3,
# which comes back to ring 0 through a DPL-3 interrupt gate (vector 0x80).
RING3_BODY = f"""
    mov byte ptr [0x10000 + {SEL_B + 5:#x}], 0xe9
    mov dword ptr [{TSS_A + 4:#x}], 0x88000
    mov dword ptr [{TSS_A + 8:#x}], 0x10
    mov ecx, 0x80
    mov eax, back_to_ring0
    mov edx, 0xee
    call set_gate
    mov dword ptr [{RES + 0x1C:#x}], esp
    push 0x23
    push 0x70000
    pushfd
    push 0x1b
    mov eax, in_ring3
    push eax
    iretd
in_ring3:
    mov eax, 0x23
    mov ds, eax
    mov es, eax
""" + _far(0x9A, SEL_B) + f"""
    int 0x80
back_to_ring0:
    mov esp, dword ptr [{RES + 0x1C:#x}]
    mov eax, 0x10
    mov ds, eax
    mov es, eax
"""


@pytest.mark.parametrize("mode", MODES)
def test_ring_3_calls_a_task(mode):
    seen = _seen(_run(_image(RING3_BODY, CALLED_B), mode))
    assert seen["r0"] == 0x4000 and seen["r1"] == SEL_A and seen["r3"] == 0xB0B
    assert seen["a_cs"] == 0x1B and seen["a_ebx"] == 0xA11CE      # A saved at ring 3
    assert seen["gdt_b"] >> 8 & 0xF == 0x9
