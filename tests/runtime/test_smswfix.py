"""smsw r32 writes the whole CR0 in every mode, real mode included
(runtime/smswfix.py completes Unicorn's 16-bit write; kvm-unit-tests'
realmode.flat "smsw" checks it).  The Unicorn fact itself:
tests/runtime/test_realmode_facts.py."""
import pytest

from bt.demos import real_mode_image
from bt.machine import MachineConfig
from runtime.smswfix import smsw_register
from runtime.vm import VM

MODES = ("emulate", "trap", "bt")


@pytest.mark.parametrize("code, code16, reg", [
    (bytes.fromhex("0f01e3"), False, 3),            # smsw ebx
    (bytes.fromhex("660f01e3"), False, None),       # smsw bx
    (bytes.fromhex("0f01e3"), True, None),          # smsw bx in 16-bit code
    (bytes.fromhex("660f01e0"), True, 0),           # smsw eax in 16-bit code
    (bytes.fromhex("2e0f01e6"), False, 6),          # a segment prefix changes nothing
    (bytes.fromhex("0f0120"), False, None),         # smsw [eax]: memory, 16 bits
    (bytes.fromhex("0f01d8"), False, None),         # another 0F 01 row (ModRM.reg 3)
    (bytes.fromhex("0fc70e"), False, None),         # cmpxchg8b: a fix site, not an smsw
    (bytes.fromhex("66"), False, None),             # truncated
])
def test_which_forms_get_cr0_whole(code, code16, reg):
    assert smsw_register(code, code16) == reg


# CR0.CD (bit 30) set, smsw r32 in real mode with the 0x66 prefix, CR0 put
# back; the status is EBX's top byte: 0x40 from CR0, 0x12 from the old EBX.
REAL_SMSW = """
    mov eax, cr0
    mov ecx, eax
    or eax, 0x40000000
    mov cr0, eax
    mov ebx, 0x12345678
    smsw ebx
    mov cr0, ecx
    mov eax, ebx
    shr eax, 24
    out 0xf4, al
"""


@pytest.mark.parametrize("mode", MODES)
def test_smsw_r32_in_real_mode_holds_cr0s_high_word(mode):
    vm = VM(real_mode_image(REAL_SMSW, "smsw-rm"), MachineConfig(mode=mode, mem_mib=8), stdout=None)
    r = vm.run()
    assert r.exit_status == 0x40, (r.reason, r.message)
    assert r.regs["ebx"] & 0xFFFF == 0x0010 and r.regs["ebx"] >> 16 == 0x4000
    assert vm.smsw.completed == 1 and vm.smsw.sites == 1
