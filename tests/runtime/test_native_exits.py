"""runtime/_exits.c: the VM's native interrupt hook answers `invlpg` at CPL 1
exactly as the Python path (runtime/emulation.py `_invlpg`) does: the same
guest-visible result as emulate (TLB effect included), and the same counters,
registers and instruction counts as with the native answer switched off."""
import struct

import capstone
import pytest

from conftest import EXIT, assemble, raw_guest
from bt.machine import DEFAULT_HYPER_BASE, MachineConfig
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
SLOT = (DEFAULT_HYPER_BASE >> 22) * 4   # the area's directory slot (0x3FA by default)
# Each directory's own (non-present) values of the slot and of its neighbours,
# all distinct: what the guest reads must be its own, as under emulate.
PD_VALUES = {PD1: (0x0000B000, 0x1234567E, 0x0000A000), PD2: (0x0000D000, 0x56789ABC, 0x0000C000)}
PER_ROUND = 20                       # bytes the guest stores per round


def directory(pd: int) -> bytes:
    below, slot, above = PD_VALUES[pd]
    pd_bytes = bytearray(0x1000)
    struct.pack_into("<I", pd_bytes, 0, PT0 | 3)
    struct.pack_into("<III", pd_bytes, SLOT - 4, below, slot, above)
    return bytes(pd_bytes)


def cr3_guest(reg: str = "ebx"):
    """Paging on; ROUNDS times: switch to the other directory (`mov cr3, reg`),
    reload DS (the CPU reads the shadow GDT through the area's entry in the
    current directory), then read and store at OUT: the other directory's
    slot, the current one's (the VMM's entry is there, shown to guest loads
    as the guest's own value: runtime/paging.py `SlotView`), a load that
    straddles the slot's first two bytes, the entries next to the slot (the
    one below inside the view's hook range, which starts 15 bytes early: both
    untouched), and a word both directories map."""
    pt0 = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    return raw_guest(f"""
        mov eax, {PD1:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov esi, {OUT:#x}
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
        mov eax, dword ptr [edx]
        mov dword ptr [esi], eax
        mov eax, dword ptr [{reg} + {SLOT:#x}]
        mov dword ptr [esi + 4], eax
        mov eax, dword ptr [{reg} + {SLOT - 2:#x}]
        mov dword ptr [esi + 8], eax
        mov eax, dword ptr [{reg} + {SLOT - 4:#x}]
        add eax, dword ptr [{reg} + {SLOT + 4:#x}]
        mov dword ptr [esi + 12], eax
        mov eax, dword ptr [{FRAME_A:#x}]
        mov dword ptr [esi + 16], eax
        add esi, {PER_ROUND}
        dec ecx
        jnz again
        """ + EXIT, [(PT0, pt0), (PD1, directory(PD1)), (PD2, directory(PD2)),
                     (FRAME_A, struct.pack("<I", 0x11111111))])


def expected_reads() -> bytes:
    """What the guest stores under emulate, worked out by hand: its own values."""
    out = b""
    for ecx in range(ROUNDS, 0, -1):
        cur, other = (PD1, PD2) if ecx & 1 else (PD2, PD1)
        below, slot, above = PD_VALUES[cur]
        straddle = (below >> 16) | ((slot & 0xFFFF) << 16)
        out += struct.pack("<IIIII", PD_VALUES[other][1], slot, straddle, below + above, 0x11111111)
    return out


def run_cr3(image, mode, native=True, view=True):
    """`native=False`: the slot never published, every mov cr3 to Python;
    `view=False`: without the slot's read hooks (runtime/paging.py `SlotView`;
    a build without the isolation module)."""
    vm = VM(image, MachineConfig(mode=mode), stdout=None)
    if vm.mode.name != "emulate" and not view:
        vm.mode.hyper_mapping.view = None
        vm.mode.hyper_mapping._publish_native()
    if vm._native_exits is not None and not native:
        vm._native_exits.x.slot = None
        vm.mode.hyper_mapping._native = None
    return vm, vm.run()


def reads(vm) -> bytes:
    return bytes(vm.uc.mem_read(OUT, ROUNDS * PER_ROUND))


def test_the_guest_reads_its_own_values_under_emulate():
    vm, res = run_cr3(cr3_guest(), "emulate")
    assert res.exit_status == 0, res.message
    assert reads(vm) == expected_reads()


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_mov_cr3_is_native_while_the_slot_view_is_on(mode):
    vm, res = run_cr3(cr3_guest("ebx"), mode)
    assert res.exit_status == 0, res.message
    hm = vm.mode.hyper_mapping
    assert hm.view is not None and vm._native_exits.x.handled == ROUNDS
    # the view and its hooks followed the slot to the last directory (PD1)
    assert hm.view.slots == [(PD1 + SLOT, 4, hm.our_entry(), PD_VALUES[PD1][1])]
    assert hm.view.hooked == (PD1 + SLOT - 15, PD1 + SLOT + 3)
    assert hm.view.stats()["slot_hook_moves"] == ROUNDS
    assert reads(vm) == expected_reads()


@pytest.mark.parametrize("view", [True, False], ids=["view", "no-view"])
@pytest.mark.parametrize("reg", ["ebx", "edi", "ebp"])
@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_native_mov_cr3_is_the_python_answer(mode, reg, view):
    ref_vm, ref = run_cr3(cr3_guest(reg), "emulate")
    assert ref.exit_status == 0, ref.message
    vm, res = run_cr3(cr3_guest(reg), mode, view=view)
    py_vm, py = run_cr3(cr3_guest(reg), mode, native=False, view=view)
    assert res.exit_status == py.exit_status == 0, (res.message, py.message)
    assert vm._native_exits.x.handled == ROUNDS          # every switch in the loop answered natively
    assert py_vm._native_exits.x.handled == 0
    assert fingerprint(vm, res) == fingerprint(py_vm, py)
    hm, py_hm = vm.mode.hyper_mapping, py_vm.mode.hyper_mapping
    assert hm.stats() == py_hm.stats()
    if view:
        assert hm.view.stats() == py_hm.view.stats()
        assert hm.view.stats()["slot_reads_hidden"] == 2 * ROUNDS     # the slot and the straddling load
        assert (hm.view.slots, hm.view.hooked) == (py_hm.view.slots, py_hm.view.hooked)
    assert bytes(vm.uc.mem_read(PD1, 0x1000)) == bytes(py_vm.uc.mem_read(PD1, 0x1000))
    assert bytes(vm.uc.mem_read(PD2, 0x1000)) == bytes(py_vm.uc.mem_read(PD2, 0x1000))
    assert vm.mode.vcpu.get("cr3") == py_vm.mode.vcpu.get("cr3") == PD1      # the last round's (ecx 1)
    assert res.counters["faults_emulated"]["mov"] == py.counters["faults_emulated"]["mov"]
    assert reads(vm) == reads(py_vm)
    # what the guest saw: its own values as under emulate, except the current
    # slot without the view (the gap the view closes: the VMM's entry)
    if view:
        assert reads(vm) == reads(ref_vm) == expected_reads()
    else:
        got, want = reads(vm), reads(ref_vm)
        assert got != want
        for k in range(ROUNDS):
            row, ref_row = got[k * PER_ROUND:(k + 1) * PER_ROUND], want[k * PER_ROUND:(k + 1) * PER_ROUND]
            assert row[:4] + row[12:] == ref_row[:4] + ref_row[12:]
            assert struct.unpack_from("<I", row, 4)[0] == hm.our_entry()
    assert (res.retired, res.serial) == (ref.retired, ref.serial)


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_switching_directories_is_emulate_in_registers_and_ram(mode):
    """The guest-level contract: a ring-0 program that switches between two
    directories ROUNDS times and reads both slots ends with emulate's registers
    and RAM (as the guest reads it), with every switch answered natively."""
    from bt.measure.observe import guest_ram
    ref_vm, ref = run_cr3(cr3_guest("ebp"), "emulate")
    vm, res = run_cr3(cr3_guest("ebp"), mode)
    assert res.exit_status == ref.exit_status == 0, res.message
    assert vm._native_exits.x.handled == ROUNDS
    assert res.regs == ref.regs and res.retired == ref.retired
    assert guest_ram(vm) == guest_ram(ref_vm)


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


def test_the_slot_takes_only_a_slot_view_and_a_view_attaches_hooks_only_to_a_slot():
    from runtime import _exits, _isolation
    vm = VM(cr3_guest(), MachineConfig(mode="trap"), stdout=None)
    x = vm._native_exits.x
    with pytest.raises(TypeError):
        x.slot = (PD1 + SLOT, 0x23, 0, SLOT // 4, vm.mode.vcpu.host_addr, object())
    assert isinstance(x, _exits.Exits)
    view = _isolation.SlotView(vm._ram_ptr, vm.config.mem_bytes)
    assert view.range() is None and view.hooked is None
    with pytest.raises(ValueError):
        view.attach((1, 2), (0, 8))                  # no slot yet: nothing to place the hooks on
    view.set([(PD1 + SLOT, 4, 0x23, 0)])
    assert view.range() == (PD1 + SLOT - 15, PD1 + SLOT + 3) and view.hooked is None
