"""`--firmware bios` (runtime/firmware.py): the start state a PC BIOS leaves a
multiboot kernel, the same in every mode; the default machine has none."""
import struct
import subprocess
import sys

import pytest
from capstone import Cs, CS_ARCH_X86, CS_MODE_16

from bt import api
from bt.demos import program_image, real_mode_image
from bt.errors import BadInput
from bt.images.image import GuestImage, Segment
from bt.machine import MachineConfig
from runtime import firmware as fw
from runtime.vm import VM

MODES = ("emulate", "trap", "bt")


def _disasm(code: bytes, at: int) -> list[str]:
    return [f"{i.mnemonic} {i.op_str}".strip() for i in Cs(CS_ARCH_X86, CS_MODE_16).disasm(code, at)]


def test_the_hand_encoded_handlers_are_the_16_bit_code_their_comments_say():
    assert _disasm(fw.IRET, 0) == ["iret"]
    assert _disasm(fw.EOI_MASTER, 0) == ["push ax", "mov al, 0x20", "out 0x20, al", "pop ax", "iret"]
    assert _disasm(fw.EOI_BOTH, 0) == ["push ax", "mov al, 0x20", "out 0xa0, al", "out 0x20, al",
                                       "pop ax", "iret"]
    assert _disasm(fw.TIMER_TICK, 0x100) == [
        "push ds", "push ax", "xor ax, ax", "mov ds, ax", "inc word ptr [0x46c]", "jne 0x110",
        "inc word ptr [0x46e]", "int 0x1c", "mov al, 0x20", "out 0x20, al", "pop ax", "pop ds", "iret"]
    # the jne skips exactly the high word's increment
    assert fw.TIMER_TICK.index(bytes([0xCD, 0x1C])) == 0x110 - 0x100


def test_the_vector_table_points_irqs_at_their_handlers_and_the_rest_at_iret():
    code, offsets = fw.bios_code()
    ivt = fw.vector_table(offsets)
    entry = [struct.unpack_from("<HH", ivt, v * 4) for v in range(256)]
    assert all(seg == fw.BIOS_SEGMENT for _, seg in entry)
    assert entry[0x08][0] == offsets["timer"]
    assert {entry[v][0] for v in range(0x09, 0x10)} == {offsets["eoi_master"]}
    assert {entry[v][0] for v in range(0x70, 0x78)} == {offsets["eoi_both"]}
    assert entry[0x1C][0] == entry[0x10][0] == entry[0x00][0] == offsets["iret"]
    for name, body in (("iret", fw.IRET), ("timer", fw.TIMER_TICK)):
        at = offsets[name] - fw.BIOS_CODE_OFFSET
        assert code[at:at + len(body)] == body


# Protected mode: the PIC and PIT as the BIOS left them, seen through their
# ports and through ticks at vector 8 (the BIOS's base, not remapped here).
PM_TICKS = """
main:
    call lib_setup_gdt
    call lib_setup_idt
    mov eax, on_tick
    mov ecx, 8
    mov edx, 0x8e
    call set_gate
    in al, 0x21
    movzx ebx, al
    in al, 0xa1
    shl eax, 8
    or bx, ax
    mov esi, dword ptr [0x20]
    mov edi, dword ptr [0x46c]
    sti
    hlt
    hlt
    hlt
    cli
    mov eax, dword ptr [ticks]
    ret
on_tick:
    inc dword ptr [ticks]
    push eax
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd
ticks:
    .long 0
"""


def _vm(image, mode, firmware, **kw):
    return VM(image, MachineConfig(mode=mode, mem_mib=8, firmware=firmware, **kw), stdout=None)


@pytest.mark.parametrize("mode", MODES)
def test_a_protected_mode_guest_finds_the_bios_pic_and_a_ticking_pit(mode):
    vm = _vm(program_image(PM_TICKS, "fw-pm"), mode, "bios")
    r = vm.run()
    assert r.exit_status == 3, (r.reason, r.message)            # three hlts, three ticks
    assert r.regs["ebx"] & 0xFFFF == 0xFFFA                     # masks: IRQ 0 and the cascade open
    offsets = fw.bios_code()[1]
    assert r.regs["esi"] == fw.BIOS_SEGMENT << 16 | offsets["timer"]
    assert r.regs["edi"] == 0                                   # no tick before the guest ran
    assert r.counters["interrupts_injected"] == {"0x8": 3}
    # 18.2 Hz: three periods of 65,536 PIT counts, at least, passed in virtual time
    assert vm.vtime >= 3 * 65536 * vm.cpu_hz // 1_193_182


def test_the_protected_mode_guest_agrees_in_every_mode():
    vms = [_vm(program_image(PM_TICKS, "fw-pm"), m, "bios") for m in MODES]
    runs = [vm.run() for vm in vms]
    ref = runs[0]
    assert {vm.vtime for vm in vms} == {vms[0].vtime}
    for r in runs[1:]:
        assert r.retired == ref.retired
        for reg in ("eax", "ebx", "esi", "edi", "eip"):
            assert r.regs[reg] == ref.regs[reg], reg


def test_without_firmware_nothing_ticks_and_the_ivt_is_empty():
    r = _vm(program_image(PM_TICKS, "fw-none"), "emulate", "none").run()
    assert r.reason == "hang"                                   # `sti; hlt` with no source
    assert r.regs["esi"] == 0 and "interrupts_injected" not in {
        k for k, v in r.counters.items() if v}


# Real mode: `sti; hlt` woken by the BIOS's own timer handler (kvm-unit-tests'
# realmode.flat "sti inhibit" relies on it), which counts at 0x46C and calls
# int 0x1C; the guest then exits with the BIOS tick count as its status.
RM_BODY = """
    sti
    hlt
    hlt
    cli
    mov al, byte ptr [0x46c]
    out 0xf4, al
"""


def test_real_mode_sti_hlt_is_woken_by_the_bios_timer_in_every_mode():
    runs = {m: _vm(real_mode_image(RM_BODY, "fw-rm"), m, "bios").run() for m in MODES}
    for mode, r in runs.items():
        assert r.exit_status == 2, (mode, r.reason, r.message)    # two ticks counted at 0x46C
        assert r.counters["interrupts_injected"] == {"0x8": 2}
        assert r.counters["exceptions_delivered"] == {"0x1c": 2}   # the BIOS's int 0x1C
    ref = runs["emulate"]
    assert {r.retired for r in runs.values()} == {ref.retired}
    assert {r.regs["eip"] for r in runs.values()} == {ref.regs["eip"]}


def test_the_bios_areas_may_not_overlap_the_image():
    image = GuestImage(path="code:low", format="raw", entry=0x100,
                       segments=[Segment(0x100, b"\xf4")], name="low")
    with pytest.raises(BadInput, match="interrupt vector table at 0x0-0x400"):
        _vm(image, "emulate", "bios")
    _vm(image, "emulate", "none")           # the default machine leaves low memory alone


def test_a_firmware_the_machine_does_not_have_is_bad_input():
    with pytest.raises(BadInput, match="firmware 'uefi' must be one of none, bios"):
        MachineConfig(firmware="uefi")
    with pytest.raises(BadInput, match="firmware"):
        api.run("demo:hello", "emulate", firmware="seabios")


def test_bt_run_firmware_flag():
    cmd = [sys.executable, "-m", "bt.cli.run", "demo:hello", "--mode", "bt", "--firmware", "bios", "-q"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "Hello" in ok.stdout, ok.stderr
    bad = subprocess.run(cmd[:-2] + ["coreboot"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'coreboot'" in bad.stderr
