"""The instruction clock walks PAE tables too (runtime/pagewalk.h, shared with
GuestMemory): a PAE guest's blocks are read from host memory, never through
Unicorn's slow virtual read, and under bt the code check finds the kernel's
scanned blocks instead of refusing every one (each refusal is a stop and a
CSAM exit).  Before the shared walk the clock's walk was two-level only."""
import struct

import pytest

from conftest import EXIT, raw_guest, run

PDPT, PD, PD3 = 0x30000, 0x31000, 0x32000
OUT = 0x40000
ROUNDS = 2000


def guest():
    """PAE on with one 2 MiB identity page (PS) for the low memory and an empty
    directory for the top GiB, then a loop
    calling a function: the same few blocks executed thousands of times."""
    tables = [(PDPT, struct.pack("<QQQQ", PD | 1, 0, 0, PD3 | 1)), (PD, struct.pack("<Q", 0x83)),
              (PD3, bytes(0x1000))]      # the top GiB's directory: trap and bt put their area there
    return raw_guest(f"""
        mov esp, 0x90000
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, {PDPT:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        xor esi, esi
        mov ecx, {ROUNDS}
    again:
        call work
        dec ecx
        jnz again
        mov dword ptr [{OUT:#x}], esi
        jmp done
    work:
        add esi, ecx
        ret
    done:
        """ + EXIT, tables)


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_a_pae_guest_is_counted_from_host_memory(mode):
    ref_vm, ref = run(guest(), "emulate")
    vm, res = run(guest(), mode)
    assert res.exit_status == 0, res.message
    assert struct.unpack("<I", vm.uc.mem_read(OUT, 4))[0] == ROUNDS * (ROUNDS + 1) // 2 & 0xFFFFFFFF
    assert (res.retired, res.regs) == (ref.retired, ref.regs)
    assert vm.clock.stats()["slow_reads"] == 0


def test_bt_does_not_refuse_every_pae_block():
    vm, res = run(guest(), "bt")
    assert res.exit_status == 0, res.message
    stats = vm.clock.c.code_stats()
    assert stats["block_checks"] > 3 * ROUNDS               # the loop's blocks, checked each time
    assert stats["unscanned_starts"] < 10, stats            # ... and found scanned
    assert res.counters["scan_exits"] < 10, res.counters["scan_exits"]
