"""The mov-ss / pop-ss interrupt shadow (issue 21, "Interrupt windows"): a
timer interrupt that falls due right after an SS load is taken one
instruction later, never at the instruction in the shadow, at the same
instruction in every mode.

The guest runs a loop around an SS load with IF = 1 while a fast PIT ticks;
the tick handler logs the interrupted EIP of each of 300 ticks.  Virtual
time is exact, so the log is a fingerprint of where each mode lets
interrupts in: emulate's (Unicorn's own shadow) is the reference.  Under
trap an RPL-0 `mov ss` and every `pop ss` fault at CPL 1 and are emulated;
under bt every SS load is a stub exit (patcher/templates.py): the VMM must
open the shadow the CPU's own load would (runtime/emulation.py
`settle_irq_shadow`), and bt must give it to the guest's next instruction,
not to the patch's jump back (runtime/bt.py `_emulate_original`), and end a
template that follows the load in its patch with its own block
(patcher/patches.py `_in_irq_shadow`).  Before this, 7 of the 10 trap/bt
cases below took ticks at other instructions than emulate (bt took 167 of
400 ticks inside a `mov ss` shadow)."""
import struct

import pytest

from bt.demos import program_image
from bt.machine import MachineConfig
from runtime.vm import VM

TICKS = 300
LOG = 0x200000

MAIN = """
main:
    call lib_setup_gdt
    call lib_setup_idt
    mov ecx, 0x20
    mov eax, w_tick
    mov edx, 0x8e
    call set_gate
    call lib_init_pic
    mov eax, 3
    call lib_init_pit
    xor ebx, ebx
    mov esi, LOG
    sti
w_loop:
    {load}
w_shadow:
    inc ebx
    inc ebx
    cmp dword ptr [w_ticks], TICKS
    jb w_loop
    cli
    call lib_mask_pic
    mov edi, dword ptr [w_bad]
    xor eax, eax
    ret
w_tick:
    push eax
    mov eax, [esp+4]
    mov dword ptr [esi], eax
    add esi, 4
    cmp eax, w_shadow
    jne w_ok
    inc dword ptr [w_bad]
w_ok:
    inc dword ptr [w_ticks]
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd
w_ticks: .long 0
w_bad: .long 0
"""

LOADS = {
    # the running SS read back (RPL 1 under trap: its native load)
    "mov_ss_same": "mov ax, ss\n    mov ss, ax",
    # an RPL-0 selector: trap's load faults at CPL 1 and is emulated
    "mov_ss_rpl0": "mov eax, KDATA\n    mov ss, ax",
    # Keystone makes `pop ss` and `push KDATA` 16-bit (tests/bt/test_demos.py
    # test_source_lint): the 32-bit forms by hand
    "pop_ss": "push 0x10\n    .byte 0x17",
    # the SS load with a translated template after it in bt's patch
    "mov_ss_then_template": "mov eax, KDATA\n    mov ss, ax\n    pushfd\n    pop edx",
    # lss loads SS without a shadow
    "lss": "lss edx, [w_far]\n    jmp w_lss_on\nw_far: .long 0\n    .word KDATA\nw_lss_on:",
}
# The instruction in the shadow is `w_shadow` only where the load is last.
SHADOW_AT_W = {"mov_ss_same", "mov_ss_rpl0", "pop_ss"}


def _run(load: str, mode: str):
    src = MAIN.replace("LOG", hex(LOG)).replace("TICKS", str(TICKS)).format(load=LOADS[load])
    vm = VM(program_image(src, "ss-shadow"), MachineConfig(mode=mode, mem_mib=8), stdout=None)
    r = vm.run()
    log = struct.unpack(f"<{TICKS}I", bytes(vm.uc.mem_read(LOG, 4 * TICKS)))
    return r, log


@pytest.mark.parametrize("load", sorted(LOADS))
def test_emulate_never_interrupts_the_instruction_in_the_shadow(load):
    r, log = _run(load, "emulate")
    assert r.exit_status == 0, r.message
    if load in SHADOW_AT_W:
        assert r.regs["edi"] == 0
    assert len(set(log)) > 3            # ticks land all over the loop


@pytest.mark.parametrize("mode", ["trap", "bt"])
@pytest.mark.parametrize("load", sorted(LOADS))
def test_every_tick_lands_where_emulate_takes_it(load, mode):
    (ref, ref_log), (r, log) = _run(load, "emulate"), _run(load, mode)
    assert r.exit_status == 0, r.message
    assert r.regs["edi"] == ref.regs["edi"]
    assert log == ref_log
    assert r.retired == ref.retired
