"""Port I/O answered natively from what devices publish (runtime/iofast.py, issue 19).

The UART publishes LSR (while reading it clears nothing) and queues THR writes
(while a byte sent raises no interrupt); everything else exits to Python.  The
guest must not see the difference: same serial output, same per-port counts,
same registers in every mode, with the exits gone.
"""
from __future__ import annotations

import pytest
from keystone import Ks, KS_ARCH_X86, KS_MODE_32

from bt.images.image import GuestImage, Segment
from bt.machine import MachineConfig
from runtime.vm import VM

COM1 = 0x3F8


def _asm(src: str, addr: int = 0x1000) -> bytes:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(src, addr)
    return bytes(code)


def _run(src: str, mode: str = "emulate"):
    img = GuestImage(path="test", format="raw", entry=0x1000,
                     segments=[Segment(0x1000, _asm(src))], regs={"esp": 0x8000})
    vm = VM(img, MachineConfig(mem_mib=4, mode=mode), stdout=None)
    return vm, vm.run()


# Polled console output as Linux's serial8250_console_write does it: wait for
# THRE in LSR, write THR; 200 bytes 'A'..'Z' cycling.
_POLLED = """
    xor ecx, ecx
next:
    mov dx, 0x3fd
wait:
    in al, dx
    test al, 0x20
    jz wait
    mov eax, ecx
    xor edx, edx
    mov ebx, 26
    div ebx
    lea eax, [edx + 0x41]
    mov dx, 0x3f8
    out dx, al
    inc ecx
    cmp ecx, 200
    jne next
    mov al, 5
    out 0xf4, al
"""


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_polled_serial_output_takes_no_exit(mode):
    vm, r = _run(_POLLED, mode)
    assert (r.reason, r.exit_status) == ("debug-exit", 5)
    assert r.serial == bytes(0x41 + i % 26 for i in range(200))
    assert r.counters["io_exits"] == 1                  # the debug exit only
    assert r.counters["io_native"] == 400
    assert r.counters["io_by_port"] == {"0xf4": 1, "0x3f8": 200, "0x3fd": 200}
    assert vm.devices["uart"].tx_bytes == 200


def test_bytes_queued_before_a_stop_are_sent_and_none_after():
    # THR writes, the debug exit, and more THR writes in the same block.
    vm, r = _run("mov dx, 0x3f8; mov al, 0x61; out dx, al; mov al, 0x62; out dx, al; "
                 "mov al, 9; out 0xf4, al; mov dx, 0x3f8; mov al, 0x63; out dx, al; hlt")
    assert (r.reason, r.exit_status) == ("debug-exit", 9)
    assert r.serial == b"ab"


def test_thr_exits_while_the_thre_interrupt_is_enabled():
    # ETBEI on (IER bit 1): every byte sent is an interrupt edge, so it exits.
    _, r = _run("mov dx, 0x3f9; mov al, 2; out dx, al; mov dx, 0x3f8; mov al, 0x61; out dx, al; "
                "out dx, al; out dx, al; mov al, 0; out 0xf4, al")
    assert r.serial == b"aaa"
    assert r.counters["io_native"] == 0
    assert r.counters["io_exits"] == 5


def test_lsr_with_an_overrun_exits_and_clears_it():
    # Loopback on (MCR bit 4), FIFOs off: the second THR byte overruns the
    # one-byte receiver.  The first LSR read reports OE (an exit: it clears it),
    # the second reads without it (natively); THR writes in loopback exit.
    _, r = _run("mov dx, 0x3fc; mov al, 0x10; out dx, al; mov dx, 0x3f8; mov al, 1; out dx, al; "
                "out dx, al; mov dx, 0x3fd; in al, dx; mov bl, al; in al, dx; mov bh, al; "
                "mov al, 0; out 0xf4, al")
    assert r.regs["ebx"] & 0xFFFF == 0x6163       # BL: THRE|TEMT|OE|DR, BH: THRE|TEMT|DR
    assert r.counters["io_native"] == 1
    assert r.serial == b""


def test_post_code_writes_queue_past_the_queue_size_in_order():
    # 5,000 writes to port 0x80 in one slice: more than the native queue holds
    # (4,096), so one takes the slow path, which replays the queue first.
    vm, r = _run("xor ecx, ecx; l: mov eax, ecx; out 0x80, al; inc ecx; cmp ecx, 5000; jne l; "
                 "in al, 0x80; mov ebx, eax; mov al, 0; out 0xf4, al")
    assert r.counters["io_by_port"] == {"0x80": 5001, "0xf4": 1}
    assert vm.devices["port80"].last == 4999 & 0xFF
    assert r.regs["ebx"] & 0xFF == 0xFF
    # exits: the one write past the full queue, and the debug exit; the read is native
    assert r.counters["io_exits"] == 2 and r.counters["io_native"] == 4999 + 1


# ISA PnP's probe as Linux makes it: writes to the address port 0x279 and the
# write-data port 0xA79, reads of a read-data port (0x213); nobody claims them.
_PROBE = ("mov ecx, 300; l: mov dx, 0x279; mov al, cl; out dx, al; mov dx, 0xa79; out dx, al; "
          "mov dx, 0x213; in al, dx; add ebx, eax; dec ecx; jnz l; mov al, 0; out 0xf4, al")


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_unclaimed_ports_float_without_an_exit_and_count_as_before(mode):
    vm, r = _run("xor ebx, ebx; " + _PROBE, mode)
    assert r.regs["ebx"] == 300 * 0xFF                  # every read floated to 0xFF
    assert r.counters["io_by_port"] == {"0x213": 300, "0x279": 300, "0xa79": 300, "0xf4": 1}
    assert r.counters["unhandled_port_reads"] == {"0x213": 300}
    assert r.counters["unhandled_port_writes"] == {"0x279": 300, "0xa79": 300}
    assert r.counters["io_exits"] == 1 and r.counters["io_native"] == 900


def test_a_device_attached_later_takes_its_port_back():
    from runtime.devices.base import Device

    class Probe(Device):
        name = "probe"
        ports = (range(0x213, 0x214),)
        written: list[int] = []

        def read(self, port, size):
            return 0x42

        def write(self, port, size, value):
            self.written.append(value)

    img = GuestImage(path="test", format="raw", entry=0x1000,
                     segments=[Segment(0x1000, _asm("xor ebx, ebx; mov dx, 0x213; mov al, 7; out dx, al; "
                                                    "in al, dx; mov ebx, eax; mov al, 0; out 0xf4, al"))],
                     regs={"esp": 0x8000})
    vm = VM(img, MachineConfig(mem_mib=4), stdout=None)
    probe = vm.bus.attach(Probe(), vm)
    r = vm.run()
    assert r.regs["ebx"] & 0xFF == 0x42 and probe.written == [7]
    assert r.counters["unhandled_port_reads"] == {} and r.counters["io_exits"] == 3
