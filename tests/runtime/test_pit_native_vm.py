"""A guest reading the PIT's counters in a loop (Linux's quick_pit_calibrate
style: channel 2 in mode 0, lo/hi, LSB then MSB), with the native reads
(runtime/_iofast.c, "The PIT's counter reads") on and off: the same values,
registers and instruction counts in every mode, with the reads' exits gone.
"""
from __future__ import annotations

import pytest
from keystone import Ks, KS_ARCH_X86, KS_MODE_32

from bt.images.image import GuestImage, Segment
from bt.machine import MachineConfig
from runtime.iofast import NativeIO
from runtime.vm import VM

# Channel 2 (gate on through port 0x61) in mode 0, channel 0 in mode 3 and
# channel 1 in mode 2, read 1,500 times each in a loop (every read mixed into
# EBX); every 256 rounds a counter-latch command for channel 2, and once a
# lone LSB read of channel 1 leaves its flip-flop on the MSB across a latch
# command (native too, runtime/_iofast.c timer_latch) whose two bytes are read next.  IF is clear: IRQ 0 stays pending.
_LOOP = """
    mov al, 1
    out 0x61, al
    mov al, 0xb0
    out 0x43, al
    mov al, 0xff
    out 0x42, al
    out 0x42, al
    mov al, 0x36
    out 0x43, al
    mov al, 0x9b
    out 0x40, al
    mov al, 0x2e
    out 0x40, al
    mov al, 0x74
    out 0x43, al
    mov al, 0x10
    out 0x41, al
    out 0x41, al
    xor ebx, ebx
    mov ecx, 1500
l:
    in al, 0x42
    rol ebx, 5
    xor bl, al
    in al, 0x42
    rol ebx, 5
    xor bl, al
    in al, 0x40
    rol ebx, 3
    xor bl, al
    in al, 0x40
    rol ebx, 3
    xor bl, al
    in al, 0x41
    rol ebx, 7
    xor bl, al
    in al, 0x41
    rol ebx, 7
    xor bl, al
    test ecx, 255
    jnz skip
    mov al, 0x80
    out 0x43, al
skip:
    cmp ecx, 700
    jne next
    in al, 0x41
    mov ah, al
    mov al, 0x40
    out 0x43, al
    in al, 0x41
    rol ebx, 11
    xor bl, al
    xor bh, ah
next:
    dec ecx
    jnz l
    mov al, 0
    out 0xf4, al
"""


def _run(mode: str):
    code, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(_LOOP, 0x1000)
    img = GuestImage(path="test", format="raw", entry=0x1000,
                     segments=[Segment(0x1000, bytes(code))], regs={"esp": 0x8000})
    vm = VM(img, MachineConfig(mem_mib=4, mode=mode), stdout=None)
    return vm.run()


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_native_pit_reads_change_nothing_but_the_exits(mode, monkeypatch):
    on = _run(mode)
    monkeypatch.setattr(NativeIO, "use_clock_time", lambda *a: None)   # the PIT never publishes
    off = _run(mode)
    assert (on.reason, on.exit_status) == (off.reason, off.exit_status) == ("debug-exit", 0)
    assert on.regs == off.regs
    assert (on.retired, on.vtime) == (off.retired, off.vtime)
    assert on.counters["io_by_port"] == off.counters["io_by_port"]
    assert on.counters["io_by_port"]["0x42"] == 3000 + 2         # reads + the count written
    reads = 6 * 1500 + 2
    latches = 6     # counter-latch commands: 5 of channel 2, 1 of channel 1
    # Off: every read and latch command exits.  On: none does, a latch's
    # bytes included.
    assert off.counters["io_native"] == 0
    assert on.counters["io_native"] == reads + latches
    assert off.counters["io_exits"] - on.counters["io_exits"] == reads + latches
    assert on.regs["ebx"] != 0
