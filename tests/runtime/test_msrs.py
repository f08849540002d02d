"""rdmsr/wrmsr under trap and bt (runtime/emulation.py): the guest reads what it
reads under emulate.  MSRs that lead into ring 0 (sysenter, syscall targets),
the TSC and EFER stay in the virtual CPU; every other MSR goes to Unicorn's own
MSR code, which is what the guest's instruction runs under emulate.  Found on
Debian's kernel: its PMU probe (check_hw_exists) writes a P6 performance
counter and reads it back; Unicorn ignores that write, so emulate printed
"Broken PMU hardware detected" while bt, answering from a virtual store, printed
"p6 PMU driver." (docs/linux.md)."""
import struct

import pytest

from conftest import EXIT, raw_guest, run

OUT = 0x40000
# (msr, value written): P6 counter and event select (writes ignored), MISC_ENABLE
# and PAT (stored), the microcode revision (fixed), SYSENTER_CS (virtual: 16 bits
# kept), SYSENTER_EIP (virtual).  MSRs outside the CPU model (unknown numbers,
# FS_BASE...) #GP in every mode: tests/runtime/test_cpu_model.py.
CASES = [(0xC1, 0x1234), (0x186, 0x430000), (0x1A0, 0x1), (0x277, 0x0007040600070406),
         (0x8B, 0x55), (0x174, 0xABCD1234), (0x176, 0xC1000000)]


def guest():
    body = []
    for i, (msr, value) in enumerate(CASES):
        body.append(f"""
        mov ecx, {msr:#x}
        mov eax, {value & 0xFFFFFFFF:#x}
        mov edx, {value >> 32:#x}
        wrmsr
        xor eax, eax
        xor edx, edx
        rdmsr
        mov dword ptr [{OUT + 8 * i:#x}], eax
        mov dword ptr [{OUT + 8 * i + 4:#x}], edx""")
    return raw_guest("mov esp, 0x90000\n" + "\n".join(body) + "\n" + EXIT)


def readback(vm):
    return [struct.unpack("<Q", vm.uc.mem_read(OUT + 8 * i, 8))[0] for i in range(len(CASES))]


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_the_guest_reads_back_what_it_reads_under_emulate(mode):
    ref_vm, ref = run(guest(), "emulate")
    vm, res = run(guest(), mode)
    assert ref.exit_status == res.exit_status == 0, res.message
    want = readback(ref_vm)
    assert want[0] == 0 and want[1] == 0, "Unicorn ignores writes to the P6 counters"
    assert want[5] == 0x1234, "SYSENTER_CS keeps 16 bits"
    assert readback(vm) == want
    assert (res.regs, res.retired) == (ref.regs, ref.retired)
    assert res.counters["faults_emulated"]["wrmsr"] == res.counters["faults_emulated"]["rdmsr"] == len(CASES)


def test_the_sysenter_target_never_reaches_the_real_cpu():
    vm, res = run(guest(), "trap")
    assert res.exit_status == 0
    assert vm.uc.msr_read(0x174) != 0x1234 and vm.uc.msr_read(0x176) != 0xC1000000
    assert vm.mode.vcpu.msrs[0x174] == 0x1234
