"""Virtual-8086 mode (runtime/v86.py) in small guests, every mode.

A ring-0 guest enters V86 code at 0x40000 (CS 0x4000, SS 0x4800, DS = ES
0x5000) with an `iretd` whose frame has VM set, or with a task switch to a TSS
whose EFLAGS has VM set (kvm-unit-tests taskswitch2 "VM86").  Handlers record
what they see in RES; the guest prints the words at the end, so the modes are
compared on what the guest itself observes: the 9-dword frame of an
interrupt from V86 (EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS) on the TSS's
ring-0 stack, DS/ES/FS/GS null in the handler, an iretd back into V86, #DE at
the faulting instruction, #GP(0) for hlt and (IOPL < 3) `int n` -- the V86
monitor's case -- and a #UD through a task gate back to the task that
entered V86.  Under trap and bt the guest kernel's iretd at CPL 1 ignores VM,
so the VMM enters V86 (runtime/emulation.py `_iret`, bt's iretd stub exits on
VM); V86 code runs natively at CPL 3 in every mode.  Serial output, status,
retired instructions and the final registers must be emulate's.
"""
import re

import pytest
from keystone import Ks, KS_ARCH_X86, KS_MODE_16

from bt.demos import program_image
from bt.machine import MachineConfig
from runtime.vm import VM

MODES = ("emulate", "trap", "bt")
RES = 0x15000
NSLOTS = 24
V86_CODE, V86_SS, V86_DS = 0x40000, 0x4800, 0x5000
TSS_B, SEL_B = 0x14000, 0x38        # the V86 task's TSS
IOPL3 = 0x3000


def _blob(src: str) -> str:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_16).asm(src, 0)
    return ", ".join(hex(x) for x in code)


def _record(slot: int, src: str) -> str:
    return f"    mov eax, {src}\n    mov dword ptr [{RES + 4 * slot:#x}], eax\n"


# An `int 0x21` handler (interrupt gate, DPL 3): the frame above the saved
# EAX and the data segments it was entered with; AX = 0x77 for V86.
H_INT = "h_int:\n    push eax\n" + \
    "    mov eax, ds\n    push eax\n    mov eax, es\n    push eax\n    mov eax, fs\n    push eax\n" + \
    "    mov eax, gs\n    push eax\n    mov ax, KDATA\n    mov ds, ax\n" + \
    "".join(_record(i, f"dword ptr [esp + {20 + 4 * i}]") for i in range(9)) + \
    "".join(_record(9 + i, f"dword ptr [esp + {12 - 4 * i}]") for i in range(4)) + """
    add esp, 16
    pop eax
    mov ax, 0x77
    iretd
"""

# #GP: error code, EIP, a count; at a hlt the V86 run ends, else the
# monitor steps over the 2-byte `int n` it refused.
H_GP = """
h_gp:
    push eax
    push ebx
    mov ax, KDATA
    mov ds, ax
""" + _record(14, "dword ptr [esp + 8]") + _record(15, "dword ptr [esp + 12]") + f"""
    inc dword ptr [{RES + 16 * 4:#x}]
    mov ebx, dword ptr [esp + 16]
    shl ebx, 4
    add ebx, dword ptr [esp + 12]
    cmp byte ptr [ebx], 0xf4
    je v86_over
    add dword ptr [esp + 12], 2
    pop ebx
    pop eax
    add esp, 4
    iretd
"""

# #DE: the faulting EIP and CS; steps over the 2-byte `div cl`.
H_DE = "h_de:\n    push eax\n    mov ax, KDATA\n    mov ds, ax\n" + \
    _record(17, "dword ptr [esp + 4]") + _record(18, "dword ptr [esp + 8]") + """
    add dword ptr [esp + 4], 2
    pop eax
    iretd
"""

# Back in ring 0 for good: the guest's segments and stack, then the report.
OVER = """
v86_over:
    mov ax, KDATA
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, dword ptr [saved_esp]
    jmp finish
"""


def _image(v86_src: str, enter: str, extra: str = "", setup: str = ""):
    reports = "".join(f"""
    mov esi, name_r{i}
    mov eax, dword ptr [{RES + 4 * i:#x}]
    call report""" for i in range(NSLOTS))
    names = "".join(f'name_r{i}:\n    .asciz "r{i}"\n' for i in range(NSLOTS))
    gates = "".join(f"""
    mov ecx, {vec:#x}
    mov eax, {h}
    mov edx, {typ:#x}
    call set_gate""" for vec, h, typ in ((0x21, "h_int", 0xEE), (13, "h_gp", 0x8E), (0, "h_de", 0x8E)))
    main = f"""
main:
    call lib_setup_gdt
    call lib_setup_idt
    mov dword ptr [TSS_ADDR + 4], KERNEL_STACK_TOP
    mov dword ptr [TSS_ADDR + 8], KDATA
    mov word ptr [TSS_ADDR + 102], 104
    mov ax, TSS_SEL
    ltr ax
{gates}
    mov edi, {RES:#x}
    xor eax, eax
    mov ecx, {NSLOTS}
    .byte 0xf3, 0xab
    mov esi, v86_blob
    mov edi, {V86_CODE:#x}
    mov ecx, v86_end - v86_blob
    .byte 0xf3, 0xa4
{setup}
    mov dword ptr [saved_esp], esp
{enter}
finish:
{reports}
    xor eax, eax
    ret
{H_INT}
{H_GP}
{H_DE}
{OVER}
{extra}
saved_esp:
    .long 0
v86_blob:
    .byte {_blob(v86_src)}
v86_end:
{names}
"""
    return program_image(main, "v86")


def _iret_into_v86(iopl_bits: int) -> str:
    return f"""
    push 0
    push 0
    push {V86_DS:#x}
    push {V86_DS:#x}
    push {V86_SS:#x}
    push 0x800
    push {0x20002 | iopl_bits:#x}
    push {V86_CODE >> 4:#x}
    push 0
    iretd
"""


def _run(image, mode: str):
    r = VM(image, MachineConfig(mode=mode, mem_mib=8), stdout=None).run()
    assert r.exit_status == 0, (mode, r.reason, r.message, r.serial[-300:])
    return r


def _seen(r) -> list[int]:
    words = dict(re.findall(rb"r(\d+): 0x([0-9a-f]+)", r.serial))
    return [int(words[str(i).encode()], 16) for i in range(NSLOTS)]


def _same_in_every_mode(image):
    runs = {m: _run(image, m) for m in MODES}
    ref = runs["emulate"]
    for m, r in runs.items():
        assert (r.serial, r.exit_status, r.retired, r.regs) == \
            (ref.serial, ref.exit_status, ref.retired, ref.regs), m
    return _seen(ref)


# IOPL 3: loads and stores through DS and ES, a push, int 0x21 answered by a
# ring-0 handler and returned from, #DE, then hlt (#GP) ends the run.
IOPL3_BODY = f"""
    mov ax, 0x1234
    mov word ptr [0x10], ax
    mov bx, word ptr [0x10]
    add bx, 1
    mov word ptr es:[0x12], bx
    push bx
    int 0x21
    mov word ptr [0x14], ax
    xor cl, cl
    div cl
    mov word ptr [0x16], 0x5555
    hlt
"""


def test_iopl3_int_n_through_the_idt_with_the_v86_frame_then_de_and_hlt():
    seen = _same_in_every_mode(_image(IOPL3_BODY, _iret_into_v86(IOPL3)))
    frame = seen[:9]
    assert frame[0] == 0x15                             # EIP past the int 0x21
    assert frame[1] == V86_CODE >> 4
    assert frame[2] & 0x20000 and frame[2] & 0x3000 == 0x3000    # VM, IOPL 3
    assert frame[3:9] == [0x7FE, V86_SS, V86_DS, V86_DS, 0, 0]   # after the push
    assert seen[9:13] == [0, 0, 0, 0]                   # DS, ES, FS, GS null in the handler
    assert seen[17:19] == [0x1A, V86_CODE >> 4]         # #DE at the div
    assert seen[14] == 0 and seen[16] == 1              # one #GP(0): the hlt
    assert seen[15] == 0x22


@pytest.mark.parametrize("mode", MODES)
def test_iopl0_int_n_is_gp0_for_the_v86_monitor(mode):
    image = _image("int 0x21\n mov word ptr [0x20], 0x6666\n hlt", _iret_into_v86(0))
    ref = _run(image, "emulate")
    r = ref if mode == "emulate" else _run(image, mode)
    assert (r.serial, r.retired, r.regs) == (ref.serial, ref.retired, ref.regs)
    seen = _seen(r)
    assert seen[16] == 2                                # #GP at the int, then at the hlt
    assert seen[14] == 0 and seen[15] == 8              # the hlt's: error 0, EIP 8
    assert seen[0] == 0                                 # the int never reached its gate


# -- a task switch into a V86 task and out of it through a task gate -------------------
# Task A (the demos' TSS) sets its back link to B and NT, and irets: B is a
# V86 task (busy, as taskswitch2 marks it).  B's code stores, takes an int
# 0x21 through the IDT (its ring-0 stack from B's TSS) and returns, then
# `ud2`: #UD through an IDT task gate goes back to A after its iretd.
ENTER_TASK = """
    pushfd
    or dword ptr [esp], 0x4000
    popfd
    iretd
after_task:
"""
SETUP_TASK = f"""
    mov dword ptr [0x10000 + {SEL_B:#x}], {(TSS_B & 0xFFFF) << 16 | 0x67:#x}
    mov dword ptr [0x10000 + {SEL_B + 4:#x}], {0x8B00 | (TSS_B >> 16) & 0xFF:#x}
    .byte 0x0f, 0x01, 0x15
    .long ts_gdtr
    mov edi, {TSS_B:#x}
    xor eax, eax
    mov ecx, 26
    .byte 0xf3, 0xab
    mov dword ptr [{TSS_B + 0x04:#x}], 0x86000
    mov dword ptr [{TSS_B + 0x08:#x}], KDATA
    mov dword ptr [{TSS_B + 0x20:#x}], 0
    mov dword ptr [{TSS_B + 0x24:#x}], {0x20002 | IOPL3:#x}
    mov dword ptr [{TSS_B + 0x38:#x}], 0x800
    mov dword ptr [{TSS_B + 0x48:#x}], {V86_DS:#x}
    mov dword ptr [{TSS_B + 0x4C:#x}], {V86_CODE >> 4:#x}
    mov dword ptr [{TSS_B + 0x50:#x}], {V86_SS:#x}
    mov dword ptr [{TSS_B + 0x54:#x}], {V86_DS:#x}
    mov dword ptr [{TSS_B + 0x58:#x}], 0x1234
    mov word ptr [TSS_ADDR], {SEL_B:#x}
    mov dword ptr [IDT_ADDR + 6 * 8], TSS_SEL << 16
    mov dword ptr [IDT_ADDR + 6 * 8 + 4], 0x8500
"""
TASK_EXTRA = f"""
ts_gdtr:
    .word 0x4f
    .long 0x10000
task_back:
""" + _record(19, f"dword ptr [{TSS_B + 0x20:#x}]") + _record(20, f"dword ptr [{TSS_B + 0x24:#x}]") + \
    _record(21, f"dword ptr [{TSS_B + 0x4C:#x}]") + _record(22, f"dword ptr [{TSS_B + 0x58:#x}]") + \
    _record(23, "dword ptr [TSS_ADDR]") + """
    jmp v86_over
"""
TASK_BODY = """
    mov word ptr [0x10], 0x4321
    int 0x21
    mov word ptr [0x14], ax
    ud2
"""


@pytest.mark.parametrize("mode", MODES)
def test_task_switch_into_a_v86_task_and_back_through_a_task_gate(mode):
    image = _image(TASK_BODY, ENTER_TASK + "    jmp task_back\n", TASK_EXTRA, SETUP_TASK)
    ref = _run(image, "emulate")
    r = ref if mode == "emulate" else _run(image, mode)
    assert (r.serial, r.retired, r.regs) == (ref.serial, ref.retired, ref.regs)
    seen = _seen(r)
    assert seen[0] == 8 and seen[1] == V86_CODE >> 4    # int 0x21 from the V86 task
    assert seen[2] & 0x20000
    assert seen[3:9] == [0x800, V86_SS, V86_DS, V86_DS, 0x1234, 0]
    assert seen[19] == 0xB                              # B saved at its ud2
    assert seen[20] & 0x20000                           # with VM in its EFLAGS
    assert seen[21] == V86_CODE >> 4 and seen[22] == 0x1234
    assert seen[23] == SEL_B                            # A's back link: B


# -- a gate V86 code may not use, and timer interrupts while V86 code runs ------------
@pytest.mark.parametrize("mode", MODES)
def test_int_n_through_a_dpl0_gate_is_gp_with_the_gate_in_the_error_code(mode):
    """IOPL 3, but the gate's DPL 0 < CPL 3: #GP(vector * 8 + 2), no frame pushed
    for the int itself."""
    setup = """
    mov ecx, 0x21
    mov eax, h_int
    mov edx, 0x8e
    call set_gate
"""
    image = _image("int 0x21\n hlt", _iret_into_v86(IOPL3), setup=setup)
    ref = _run(image, "emulate")
    r = ref if mode == "emulate" else _run(image, mode)
    assert (r.serial, r.retired, r.regs) == (ref.serial, ref.retired, ref.regs)
    seen = _seen(r)
    assert seen[16] == 2 and seen[0] == 0
    assert seen[14] == 0                                # the hlt's #GP(0), recorded last
    assert seen[15] == 2


TICKS_SETUP = """
    mov ecx, 0x20
    mov eax, h_tick
    mov edx, 0x8e
    call set_gate
    call lib_init_pic
    mov eax, 60
    call lib_init_pit
"""
# The tick handler (interrupt gate): counts, keeps the interrupted frame's CS,
# EFLAGS and DS slot, sends EOI and returns into V86.
TICKS_EXTRA = "h_tick:\n    push eax\n    mov ax, KDATA\n    mov ds, ax\n" + \
    f"    inc dword ptr [{RES + 19 * 4:#x}]\n" + \
    _record(20, "dword ptr [esp + 8]") + _record(21, "dword ptr [esp + 12]") + \
    _record(22, "dword ptr [esp + 28]") + """
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd
"""
TICKS_BODY = """
    mov cx, 0xC000
spin:
    add word ptr [0x30], 3
    adc word ptr [0x32], 0
    loop spin
    hlt
"""


def test_timer_interrupts_taken_in_v86_code_at_the_same_instructions_in_every_mode():
    image = _image(TICKS_BODY, _iret_into_v86(IOPL3 | 0x200), TICKS_EXTRA, TICKS_SETUP)
    seen = _same_in_every_mode(image)
    assert seen[19] > 10                                # ticks were taken in V86 code
    assert seen[20] == V86_CODE >> 4 and seen[21] & 0x20200 == 0x20200
    assert seen[22] == V86_DS


# -- a page fault in V86 code under paging ---------------------------------------------
PT, PD = 0x30000, 0x31000
PAGING_SETUP = f"""
    mov ecx, 14
    mov eax, h_pf
    mov edx, 0x8e
    call set_gate
    mov edi, {PT:#x}
    mov eax, 7
fill_pt:
    mov dword ptr [edi], eax
    add eax, 0x1000
    add edi, 4
    cmp edi, {PT + 4096:#x}
    jne fill_pt
    mov dword ptr [{PT + 0x60 * 4:#x}], 0x60006
    mov edi, {PD:#x}
    xor eax, eax
    mov ecx, 1024
    .byte 0xf3, 0xab
    mov dword ptr [{PD:#x}], {PT | 7:#x}
    mov eax, {PD:#x}
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
"""
# #PF: CR2, the error code, the frame's EIP and CS; maps the page, returns.
PF_EXTRA = "h_pf:\n    push eax\n    mov ax, KDATA\n    mov ds, ax\n" + \
    _record(19, "cr2") + _record(20, "dword ptr [esp + 4]") + _record(21, "dword ptr [esp + 8]") + \
    _record(22, "dword ptr [esp + 12]") + f"""
    inc dword ptr [{RES + 23 * 4:#x}]
    or dword ptr [{PT + 0x60 * 4:#x}], 1
    invlpg [0x60000]
    pop eax
    add esp, 4
    iretd
"""
PF_BODY = """
    mov ax, 0x6000
    mov es, ax
    mov word ptr [0x18], 0x1111
    mov bx, word ptr es:[0x10]
    mov word ptr es:[0x12], 0x2222
    hlt
"""


@pytest.mark.parametrize("mode", MODES)
def test_page_fault_in_v86_code_is_a_user_fault_restarted_after_the_handler(mode):
    image = _image(PF_BODY, _iret_into_v86(IOPL3), PF_EXTRA, PAGING_SETUP)
    ref = _run(image, "emulate")
    r = ref if mode == "emulate" else _run(image, mode)
    assert (r.serial, r.retired, r.regs) == (ref.serial, ref.retired, ref.regs)
    seen = _seen(r)
    assert seen[23] == 1                                # one #PF, then the load ran again
    assert seen[19] == 0x60010                          # CR2: ES * 16 + 0x10
    assert seen[20] == 4                                # user, read, not present
    assert seen[21:23] == [0xB, V86_CODE >> 4]          # at the load
    assert seen[16] == 1 and seen[15] == 0x17           # then the hlt


@pytest.mark.parametrize("mode", MODES)
def test_port_io_in_v86_runs_unchecked_in_every_mode(mode):
    """Not the CPU's rule (the TSS I/O bitmap; the demos' TSS has none, so
    every port is denied): Unicorn runs V86 `in`/`out` unchecked at any IOPL
    (tests/runtime/test_v86_facts.py), and every mode does the same, the
    VMM's port hooks answering (docs/fidelity.md, "Virtual-8086 mode")."""
    body = "mov dx, 0x3f8\n mov al, 0x56\n out dx, al\n mov al, 0x0a\n out dx, al\n" \
           "mov dx, 0x3fd\n in al, dx\n mov word ptr [0x40], ax\n hlt"
    image = _image(body, _iret_into_v86(0))
    ref = _run(image, "emulate")
    r = ref if mode == "emulate" else _run(image, mode)
    assert (r.serial, r.retired, r.regs) == (ref.serial, ref.retired, ref.regs)
    assert r.serial.startswith(b"V\n")
    assert _seen(r)[16] == 1                            # only the hlt faulted
