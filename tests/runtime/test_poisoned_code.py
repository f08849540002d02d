"""A guest that fills a page of code it ran with 0xcc, int3's byte (issue 17:
Linux poisons its freed init code so, `free_initmem`).

Under bt that page carries a jump patch and an int3 guard.  The guest's stores
are logged by the clock's write hook (runtime/_clock.c); when the log
overflowed (one entry per store: 256) the VMM could not tell a guest's 0xcc
from its own int3 and put the guard's original byte back, and it restored the
jump patch's original bytes over the guest's poison.  A store that continues
the last logged range now extends it, so a memset is one entry and the log
stays exact.  Guest RAM must be emulate's byte for byte.
"""
from __future__ import annotations

import pytest

from bt.images.image import GuestImage, Segment
from bt.machine import MachineConfig
from bt.measure.observe import guest_ram
from conftest import EXIT, LOAD, assemble
from runtime.vm import VM

CODE = 0x110000
SLED = 1500            # scanned nops: ~375 logged stores hit them, past the log's 256


def _guest() -> GuestImage:
    main = assemble(f"mov esp, 0x90000\nmov eax, {CODE:#x}\ncall eax\n"
                    f"cld\nmov edi, {CODE:#x}\nmov eax, 0xcccccccc\nmov ecx, 1024\nrep stosd\n"
                    "mov eax, 0x120000\ncall eax\n"       # new code: its scan drains the write log
                    f"mov esi, dword ptr [{CODE + SLED:#x}]\n"
                    "xor eax, eax\n" + EXIT + "hlt\n")
    code = assemble("nop\n" * SLED + f"pushfd\npopfd\nmov ebx, {CODE + 0xF00:#x}\ncall ebx\nret\n", CODE)
    return GuestImage("poisoned-code", "raw", LOAD, [Segment(LOAD, main), Segment(CODE, code),
                                                     Segment(CODE + 0xF00, b"\xc3"), Segment(0x120000, b"\xc3")])


def _run(mode):
    vm = VM(_guest(), MachineConfig(mode=mode, mem_mib=4), stdout=None)
    res = vm.run()
    assert res.exit_status == 0, res.message
    return vm, res


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_code_poisoned_with_int3_bytes_reads_and_stays_as_the_guest_wrote_it(mode):
    ref_vm, ref = _run("emulate")
    vm, res = _run(mode)
    if mode == "bt":        # the page carried patches when the guest poisoned it
        assert res.extra["patches"]["installed"].get("pushfd"), res.extra["patches"]
    assert res.regs == ref.regs                      # esi: the poison, read back after the drain
    assert ref.regs["esi"] == 0xCCCCCCCC
    page = slice(CODE, CODE + 0x1000)
    assert guest_ram(vm)[page] == guest_ram(ref_vm)[page] == b"\xcc" * 0x1000
    assert guest_ram(vm) == guest_ram(ref_vm)
