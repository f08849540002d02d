"""runtime/paging.py: the hypervisor area stays reachable in every address
space of a paging guest under trap, and the guest keeps its own value of the
directory slot the VMM borrows (PD[hyper_base >> 22], 0xFF000000 -> entry
0x3FC by default)."""
import struct

from conftest import EXIT, raw_guest, run

PD1, PD2, PT = 0x30000, 0x32000, 0x31000
SLOT = 0x3FC * 4
OUT = 0x40000            # the guest's results: 4 dwords


def tables():
    pt = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    pd = struct.pack("<I", PT | 3)
    return [(PT, pt), (PD1, pd), (PD2, pd)]


def guest(slot_value):
    """Paging on in PD1, a store of `slot_value` into PD1's VMM slot, a segment
    reload (the CPU reads the shadow GDT through the area's entry), a switch to
    PD2 and a look at PD1's slot from there, then back to PD1."""
    return raw_guest(f"""
        mov eax, {PD1:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov dword ptr [{PD1 + SLOT:#x}], {slot_value:#x}
        mov eax, ds
        mov ds, eax
        mov es, eax
        mov eax, {PD2:#x}
        mov cr3, eax
        mov eax, dword ptr [{PD1 + SLOT:#x}]
        mov dword ptr [{OUT:#x}], eax
        mov eax, dword ptr [{PD2 + SLOT:#x}]
        mov dword ptr [{OUT + 4:#x}], eax
        mov eax, {PD1:#x}
        mov cr3, eax
        mov eax, ds
        mov ds, eax
        mov eax, dword ptr [{PD1 + SLOT:#x}]
        mov dword ptr [{OUT + 8:#x}], eax
        """ + EXIT, tables())


def results(vm):
    return struct.unpack("<III", vm.uc.mem_read(OUT, 12))


def test_the_guest_keeps_its_own_slot_value_and_the_area_stays_reachable():
    want_vm, want = run(guest(0x56780000), "emulate")
    vm, got = run(guest(0x56780000), "trap")
    assert got.exit_status == want.exit_status == 0, got.message
    # Read from another address space: the guest's own value, as under emulate.
    assert results(vm)[0] == results(want_vm)[0] == 0x56780000
    # Read in the current directory: the VMM's entry (the documented gap).
    ours = vm.mode.hyper_mapping.our_entry()
    assert results(want_vm)[1:] == (0, 0x56780000)
    assert results(vm)[1:] == (ours, ours)
    stats = vm.mode.hyper_mapping.stats()
    assert stats["slot_writes"] == 1 and stats["guest_slot_values"] == [hex(0x56780000)]
    assert vm.mode.protect.calls <= 2 * 3 + 4      # watch/unwatch per directory switch


def test_a_present_guest_entry_in_the_slot_ends_the_run_cleanly():
    vm, res = run(guest(0x00400083), "trap")
    assert res.exit_status == 70
    assert "hypervisor area" in res.message and "0xff000000" in res.message
