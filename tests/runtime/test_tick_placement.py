"""Where a timer tick lands, in every mode: exactly where emulate takes it.

The guest runs a loop around a few instructions with IF = 1 while a fast PIT
ticks; the tick handler logs the interrupted EIP (and EAX) of each of 300 ticks.
Virtual time is exact, so the log is a fingerprint of where each mode lets
interrupts in: emulate's is the reference.

The mov-ss / pop-ss interrupt shadow (issue 21, "Interrupt windows"): a tick
that falls due right after an SS load is taken one instruction later, never
at the instruction in the shadow.  Under trap an RPL-0 `mov ss` and every
`pop ss` fault at CPL 1 and are emulated; under bt every SS load is a stub
exit (patcher/templates.py): the VMM must open the shadow the CPU's own load
would (runtime/emulation.py `settle_irq_shadow`), bt must give it to the
guest's next instruction, not to the patch's jump back (runtime/bt.py
`_emulate_original`), and end a template that follows the load in its patch
with its own block (patcher/patches.py `_in_irq_shadow`).  Before this, 7 of
the 10 trap/bt cases took ticks at other instructions than emulate (bt took
167 of 400 ticks inside a `mov ss` shadow).

Ticks due inside bt's templates (the fuzzer's `timer` feature): a slice whose
budget ends inside a template runs on to the next guest instruction's
boundary (runtime/_clock.c find_boundary, runtime/bt.py slice_limit), and a
point where a template holds a register in the state page's scratch word
(share_scratch: stores of a selector or status word) gives it back before the
tick is taken (runtime/bt.py may_inject).  Before, bt took such ticks at the
patch's end.
"""
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
    mov eax, 0x5a5a1234         # the interrupted code's EAX goes into the log too
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
    mov dword ptr [esi + 4], eax
    mov eax, [esp+4]
    mov dword ptr [esi], eax
    add esi, 8
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
    "mov_ss_same": "mov dx, ss\n    mov ss, dx",
    # an RPL-0 selector: trap's load faults at CPL 1 and is emulated
    "mov_ss_rpl0": "mov edx, KDATA\n    mov ss, dx",
    # Keystone makes `pop ss` and `push KDATA` 16-bit (tests/bt/test_demos.py
    # test_source_lint): the 32-bit forms by hand
    "pop_ss": "push 0x10\n    .byte 0x17",
    # the SS load with a translated template after it in bt's patch
    "mov_ss_then_template": "mov edx, KDATA\n    mov ss, dx\n    pushfd\n    pop edx",
    # lss loads SS without a shadow
    "lss": "lss edx, [w_far]\n    jmp w_lss_on\nw_far: .long 0\n    .word KDATA\nw_lss_on:",
    # flag templates back to back
    "popfd_pushfd": "push 0x202\n    popfd\n    pushfd\n    pop edx",
    # templates back to back that share their scratch register (bt: stores of
    # a selector or a status word, patcher/templates.py share_scratch)
    "stores": ("jmp w_st_on\nw_st: .long 0, 0\nw_st_on:\n    mov edx, w_st\n    mov word ptr [edx], cs\n"
               "    mov word ptr [edx + 2], ss\n    smsw word ptr [edx + 4]"),
}
# The instruction in the shadow is `w_shadow` only where the load is last.
SHADOW_AT_W = {"mov_ss_same", "mov_ss_rpl0", "pop_ss"}


def _run(load: str, mode: str):
    src = MAIN.replace("LOG", hex(LOG)).replace("TICKS", str(TICKS)).format(load=LOADS[load])
    vm = VM(program_image(src, "tick-placement"), MachineConfig(mode=mode, mem_mib=8), stdout=None)
    r = vm.run()
    log = struct.unpack(f"<{2 * TICKS}I", bytes(vm.uc.mem_read(LOG, 8 * TICKS)))
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


def test_bt_takes_ticks_between_templates_that_share_a_register():
    """Some ticks land between the store templates, where the register they
    share is in the scratch word (given back before the tick: may_inject)."""
    r, _ = _run("stores", "bt")
    assert r.extra["csam"]["irq_scratch_restores"] > 0
