"""The virtual TSC answered in C (runtime/_clock.c "Time-stamp counter", issue 19).

The facts it rests on, checked on a bare engine with a hook of our own: Unicorn's
rdtsc helper calls a UC_HOOK_INSN hook registered through libunicorn's
uc_hook_add, EIP in the live CPU state is the rdtsc's own address while it
runs, EDX:EAX written there is what the guest sees, and CR4.TSD is checked
before the hook (a CPL-3 rdtsc still faults).  Then: every mode answers rdtsc
with no Python exit and the same values as emulate.
"""
from __future__ import annotations

import ctypes

import pytest

from keystone import Ks, KS_ARCH_X86, KS_MODE_32
from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INTR, UC_MODE_32, Uc
from unicorn import x86_const as X

from bt.images.image import GuestImage, Segment
from bt.machine import MachineConfig
from runtime.fastuc import hook_add
from runtime.quirks import Quirks
from runtime.vm import VM

_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)


def _asm(src: str, addr: int = 0x1000) -> bytes:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(src, addr)
    return bytes(code)


def test_fact_rdtsc_hook_sees_eip_at_the_instruction_and_sets_edx_eax():
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    code = _asm("nop; nop; rdtsc; mov ebx, eax; mov ecx, edx; rdtsc; hlt")
    uc.mem_write(0x1000, code)
    q = Quirks(uc)
    assert q.env is not None
    eips = []

    def cb(_uc, _user):
        eips.append(ctypes.c_uint32.from_address(q.env + q.off.eip).value)
        uc.reg_write(X.UC_X86_REG_EAX, 0x11223344 + len(eips))
        uc.reg_write(X.UC_X86_REG_EDX, 0x55)
        return 1

    f = _INSN_CB(cb)
    hook_add(uc, UC_HOOK_INSN, ctypes.cast(f, ctypes.c_void_p).value, None, 1, 0,
             ctypes.c_int(X.UC_X86_INS_RDTSC))
    uc.emu_start(0x1000, 0x1000 + len(code) - 1)
    assert eips == [0x1002, 0x1002 + 2 + 2 + 2]
    assert (uc.reg_read(X.UC_X86_REG_EBX), uc.reg_read(X.UC_X86_REG_ECX)) == (0x11223345, 0x55)
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x11223346


def _vm(code: bytes, mode: str = "emulate") -> VM:
    img = GuestImage(path="test", format="raw", entry=0x1000, segments=[Segment(0x1000, code)],
                     regs={"esp": 0x8000})
    return VM(img, MachineConfig(mem_mib=4, mode=mode), stdout=None)


# rdtsc #k (from 0) after 2 + 5k instructions; a timer-free loop over many slices.
_LOOP = ("xor ecx, ecx; xor ebp, ebp; l: rdtsc; add ebp, eax; inc ecx; cmp ecx, 3000; jne l; "
         "mov eax, ebp; mov al, 0; out 0xf4, al")


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_every_mode_answers_rdtsc_natively_with_emulates_values(mode):
    vm = _vm(_asm(_LOOP), mode)
    assert vm.tsc.native
    r = vm.run()
    assert r.regs["ebp"] == sum(2 + 5 * k for k in range(3000)) & 0xFFFFFFFF
    assert vm.tsc.reads == vm.clock.tsc_reads == 3000
    assert "rdtsc" not in str(r.counters.get("faults_emulated", {}))
    assert "rdtsc" not in str(r.counters.get("stub_exits", {}))


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_guest_cr4_tsd_still_lets_its_kernel_read_the_tsc(mode):
    """With the guest's CR4.TSD set the real one is set too (trap, bt): the helper
    checks TSD before the hook, so the ring-1 rdtsc faults and is emulated --
    with the same value the native hook gives under emulate (CPL 0 may read)."""
    code = _asm("mov eax, cr4; or eax, 4; mov cr4, eax; nop; rdtsc; mov ebx, eax; "
                "mov eax, cr4; and eax, 0xfffffffb; mov cr4, eax; rdtsc; mov esi, eax; "
                "mov al, 0; out 0xf4, al")
    vm = _vm(code, mode)
    r = vm.run()
    assert (r.regs["ebx"], r.regs["esi"]) == (4, 9)
    emulated = r.counters.get("faults_emulated", {}).get("rdtsc", 0)
    assert emulated == (0 if mode == "emulate" else 1)
    assert vm.clock.tsc_reads == (2 if mode == "emulate" else 1)
