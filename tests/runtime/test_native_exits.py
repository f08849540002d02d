"""runtime/_exits.c: the VM's native interrupt hook answers `invlpg` at CPL 1
exactly as the Python path (runtime/emulation.py `_invlpg`) does: the same
guest-visible result as emulate (TLB effect included), and the same counters,
registers and instruction counts as with the native answer switched off."""
import struct

import capstone
import pytest

from conftest import EXIT, assemble, raw_guest
from bt.machine import MachineConfig
from runtime._exits import invlpg_length
from runtime.vm import VM

PD, PT0, PT2 = 0x30000, 0x31000, 0x32000
FRAME_A, FRAME_B = 0x50000, 0x51000
ALIAS = 0x800000                     # PDE 2 -> PT2, entry 0 -> frame A or B
OUT = 0x40000
ROUNDS = 40

_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


@pytest.mark.parametrize("src", [
    "invlpg [eax]", "invlpg [esp]", "invlpg [ebp]", "invlpg [0x800000]", "invlpg [eax+4]",
    "invlpg [eax+0x1000]", "invlpg [eax*4+ebp]", "invlpg [eax*4+0x10]", "invlpg [esp+eax*2+0x12345]",
    "invlpg [ebp+0x7f]", "invlpg [ecx*8]",
])
def test_the_length_of_every_invlpg_form_is_capstones(src):
    code = assemble(src, 0) + b"\x90" * 8
    insn = next(_CS.disasm(code, 0, 1))
    assert insn.mnemonic == "invlpg"
    assert invlpg_length(code[:8]) == insn.size


FS_INVLPG_EAX = ".byte 0x64, 0x0f, 0x01, 0x38"      # Keystone drops an `fs:` written in text


@pytest.mark.parametrize("src", ["sgdt [eax]", "lidt [eax]", "smsw eax", "rdtscp", FS_INVLPG_EAX,
                                 "nop", "invd"])
def test_anything_else_is_left_to_python(src):
    code = (assemble(src, 0) + b"\x90" * 8)[:8]
    assert next(_CS.disasm(code, 0, 1)).mnemonic != "invlpg" or code[0] == 0x64
    assert invlpg_length(code) == 0


def tables():
    pt0 = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    pd = struct.pack("<III", PT0 | 3, 0, PT2 | 3)
    return [(PT0, pt0), (PD, pd), (PT2, struct.pack("<I", FRAME_A | 3)),
            (FRAME_A, struct.pack("<I", 0x11111111)), (FRAME_B, struct.pack("<I", 0x22222222))]


def guest(form: str):
    """Paging on; ROUNDS times: read the alias, repoint its PTE at the other
    frame, invlpg it.  Every read must see the frame the PTE names now: the
    sum of the reads is the guest's result (and differs if a flush is missed)."""
    return raw_guest(f"""
        mov eax, {PD:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        xor esi, esi
        mov ecx, {ROUNDS}
    again:
        add esi, dword ptr [{ALIAS:#x}]
        mov eax, dword ptr [{PT2:#x}]
        xor eax, {FRAME_A ^ FRAME_B:#x}
        mov dword ptr [{PT2:#x}], eax
        mov eax, {ALIAS:#x}
        {form}
        dec ecx
        jnz again
        mov dword ptr [{OUT:#x}], esi
        """ + EXIT, tables())


def run(image, mode, native=True):
    vm = VM(image, MachineConfig(mode=mode), stdout=None)
    if vm._native_exits is not None and not native:
        vm._native_exits.x.invlpg = False
    return vm, vm.run()


def fingerprint(vm, res):
    return (res.exit_status, res.retired, res.vtime, res.regs, res.counters,
            struct.unpack("<I", vm.uc.mem_read(OUT, 4))[0])


@pytest.mark.parametrize("form", ["invlpg [eax]", f"invlpg [{ALIAS:#x}]", "invlpg [eax+ecx*4+0x10]"])
@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_native_invlpg_is_the_python_answer(mode, form):
    ref_vm, ref = run(guest(form), "emulate")
    assert ref.exit_status == 0, ref.message
    want = (ROUNDS // 2) * (0x11111111 + 0x22222222) & 0xFFFFFFFF
    assert struct.unpack("<I", ref_vm.uc.mem_read(OUT, 4))[0] == want
    vm, res = run(guest(form), mode)
    py_vm, py = run(guest(form), mode, native=False)
    assert vm._native_exits.x.handled == ROUNDS          # every invlpg answered natively
    assert py_vm._native_exits.x.handled == 0
    assert fingerprint(vm, res) == fingerprint(py_vm, py)
    assert res.counters["faults_emulated"]["invlpg"] == ROUNDS
    assert fingerprint(vm, res)[-1] == want               # the TLB effect emulate shows
    assert (res.retired, res.serial) == (ref.retired, ref.serial)


def test_a_prefixed_invlpg_goes_to_python_and_still_works():
    vm, res = run(guest(FS_INVLPG_EAX), "trap")
    assert res.exit_status == 0, res.message
    assert vm._native_exits.x.handled == 0
    assert res.counters["faults_emulated"]["invlpg"] == ROUNDS
    assert struct.unpack("<I", vm.uc.mem_read(OUT, 4))[0] == (ROUNDS // 2) * 0x33333333 & 0xFFFFFFFF


# -- mov cr3 -----------------------------------------------------------------------
PD1, PD2 = 0x33000, 0x34000
SLOT = 0x3FC * 4                     # the area's directory slot (0xFF000000 >> 22)


def cr3_guest(reg: str = "ebx"):
    """Paging on; ROUNDS times: switch to the other directory (PD2 holds its
    own non-present value in the VMM's slot), reload DS (the CPU reads the
    shadow GDT through the area's entry in the current directory), and add up
    the other directory's slot (the current one's shows the VMM's entry: the
    documented gap, runtime/paging.py) and a word both map.  The sum is the
    guest's result: the guest's own slot values, as under emulate."""
    pt0 = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    pd = struct.pack("<I", PT0 | 3)
    pd2 = bytearray(pd + bytes(SLOT - 4) + struct.pack("<I", 0x56780000))
    return raw_guest(f"""
        mov eax, {PD1:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        xor esi, esi
        mov ecx, {ROUNDS}
    again:
        mov {reg}, {PD2:#x}
        mov edx, {PD1 + SLOT:#x}
        test ecx, 1
        jz other
        mov {reg}, {PD1:#x}
        mov edx, {PD2 + SLOT:#x}
    other:
        mov cr3, {reg}
        mov eax, ds
        mov ds, eax
        add esi, dword ptr [edx]
        add esi, dword ptr [{FRAME_A:#x}]
        dec ecx
        jnz again
        mov dword ptr [{OUT:#x}], esi
        """ + EXIT, [(PT0, pt0), (PD1, pd), (PD2, bytes(pd2)), (FRAME_A, struct.pack("<I", 0x11111111))])


def run_cr3(image, mode, native=True, view=False):
    """`view`: keep the slot's read hooks (runtime/paging.py `SlotView`), which
    switch the native path off (their hooks move only from Python); the
    comparisons below run both paths without them."""
    vm = VM(image, MachineConfig(mode=mode), stdout=None)
    if vm.mode.name != "emulate" and not view:
        vm.mode.hyper_mapping.view = None
        vm.mode.hyper_mapping._publish_native()
    if vm._native_exits is not None and not native:
        vm._native_exits.x.slot = None       # the slot never published: every mov cr3 to Python
        vm.mode.hyper_mapping._native = None
    return vm, vm.run()


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_mov_cr3_goes_to_python_while_the_slot_view_is_on(mode):
    vm, res = run_cr3(cr3_guest("ebx"), mode, view=True)
    assert res.exit_status == 0, res.message
    assert vm.mode.hyper_mapping.view is not None and vm._native_exits.x.handled == 0


@pytest.mark.parametrize("reg", ["ebx", "edi", "ebp"])
@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_native_mov_cr3_is_the_python_answer(mode, reg):
    ref_vm, ref = run_cr3(cr3_guest(reg), "emulate")
    assert ref.exit_status == 0, ref.message
    vm, res = run_cr3(cr3_guest(reg), mode)
    py_vm, py = run_cr3(cr3_guest(reg), mode, native=False)
    assert res.exit_status == py.exit_status == 0, (res.message, py.message)
    assert vm._native_exits.x.handled == ROUNDS          # every switch in the loop answered natively
    assert py_vm._native_exits.x.handled == 0
    assert fingerprint(vm, res) == fingerprint(py_vm, py)
    assert vm.mode.hyper_mapping.stats() == py_vm.mode.hyper_mapping.stats()
    assert bytes(vm.uc.mem_read(PD1, 0x1000)) == bytes(py_vm.uc.mem_read(PD1, 0x1000))
    assert bytes(vm.uc.mem_read(PD2, 0x1000)) == bytes(py_vm.uc.mem_read(PD2, 0x1000))
    assert vm.mode.vcpu.get("cr3") == py_vm.mode.vcpu.get("cr3") == PD1      # the last round's (ecx 1)
    assert res.counters["faults_emulated"]["mov"] == py.counters["faults_emulated"]["mov"]
    # what the guest saw: its own slot values, as under emulate
    got = struct.unpack("<I", vm.uc.mem_read(OUT, 4))[0]
    assert got == struct.unpack("<I", ref_vm.uc.mem_read(OUT, 4))[0]
    assert (res.retired, res.serial) == (ref.retired, ref.serial)


def test_a_guest_store_into_the_slot_before_a_switch_goes_to_python():
    # the old slot no longer holds the VMM's entry: notice() decides (runtime/paging.py)
    img = raw_guest(f"""
        mov eax, {PD1:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov dword ptr [{PD1 + SLOT:#x}], 0x12340000
        mov eax, {PD2:#x}
        mov cr3, eax
        mov esi, dword ptr [{PD1 + SLOT:#x}]
        """ + EXIT, [(PT0, b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))),
                     (PD1, struct.pack("<I", PT0 | 3)), (PD2, struct.pack("<I", PT0 | 3))])
    vm, res = run_cr3(img, "trap")
    assert res.exit_status == 0, res.message
    assert vm._native_exits.x.handled == 0
    assert res.regs["esi"] == 0x12340000
    assert vm.mode.hyper_mapping.stats()["slot_writes"] == 1
