"""The virtual TSC (runtime/tsc.py) and the host console (runtime/devices/console.py).

Fast tests: tiny hand-made guests, a pty instead of a real terminal.
"""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from keystone import Ks, KS_ARCH_X86, KS_MODE_32
from unicorn import x86_const as X

from bt.images.image import GuestImage, Segment
from bt.machine import MachineConfig
from runtime.devices.console import CTRL_A, HostConsole, raw_terminal
from runtime.devices.uart import UART16550
from runtime.vm import VM

REPO = Path(__file__).resolve().parents[2]


def _asm(src: str, addr: int = 0x1000) -> bytes:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(src, addr)
    return bytes(code)


def _vm(code: bytes, **cfg) -> VM:
    img = GuestImage(path="test", format="raw", entry=0x1000, segments=[Segment(0x1000, code)],
                     regs={"esp": 0x8000})
    return VM(img, MachineConfig(mem_mib=4, **cfg), stdout=None)


# --- virtual TSC ---------------------------------------------------------------

def test_unicorn_binding_refuses_rdtsc_hook_but_library_calls_ours():
    """The fact runtime/tsc.py rests on: Python's hook_add refuses UC_X86_INS_RDTSC,
    libunicorn's uc_hook_add accepts it and its rdtsc helper calls the hook."""
    from unicorn import Uc, UcError, UC_ARCH_X86, UC_MODE_32, UC_HOOK_INSN
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    with pytest.raises(UcError):
        uc.hook_add(UC_HOOK_INSN, lambda *a: 1, None, 1, 0, X.UC_X86_INS_RDTSC)
    vm = _vm(b"\x0f\x31" + b"\xf4")
    assert vm.tsc.handles and all(vm.tsc.handles)


def test_rdtsc_counts_retired_instructions_exactly():
    # Instructions before the first rdtsc: 0; before the second: 1 + 2 + 5 = 8.
    code = _asm("rdtsc; mov ebx, eax; mov esi, edx; nop; nop; nop; nop; nop; rdtsc; "
                "mov edi, eax; mov al, 7; out 0xf4, al")
    vm = _vm(code)
    r = vm.run()
    assert (r.reason, r.exit_status) == ("debug-exit", 7)
    assert (r.regs["ebx"], r.regs["esi"], r.regs["edi"]) == (0, 0, 8)
    assert vm.tsc.reads == 2


def test_rdtsc_is_deterministic_across_runs_and_slices():
    # A loop that reads the TSC many times across several slices (a tiny budget
    # per slice would be the worst case for an inexact counter).
    code = _asm("xor ecx, ecx; xor ebp, ebp; l: rdtsc; add ebp, eax; inc ecx; cmp ecx, 5000; jne l; "
                "mov eax, ebp; mov al, 0; out 0xf4, al")
    results = []
    for _ in range(2):
        vm = _vm(code)
        r = vm.run()
        results.append((r.regs["ebp"], r.retired))
    assert results[0] == results[1]
    # rdtsc #k (k from 0) comes after 2 + 5k instructions: the sum is exact.
    expected = sum(2 + 5 * k for k in range(5000)) & 0xFFFFFFFF
    assert results[0][0] == expected


def test_rdtscp_also_virtual():
    code = _asm("mov ecx, 99; nop; .byte 0x0f, 0x01, 0xf9; mov ebx, eax; mov al, 0; out 0xf4, al")
    r = _vm(code).run()
    assert r.regs["ebx"] == 2 and r.regs["ecx"] == 0


# --- host console ----------------------------------------------------------------

class _Link:
    cpu_hz = 100_000_000

    def __init__(self):
        self.stops = []
        self.t = 0

    def now(self):
        return self.t

    def request_stop(self, outcome, status=None):
        stop = outcome.stop(status=status)      # what the VM records (an Outcome, checked)
        self.stops.append((stop.outcome, stop.status))

    def raise_irq(self, line):
        pass

    def lower_irq(self, line):
        pass

    def serial_out(self, data):
        pass


def _console():
    master, slave = pty.openpty()
    link = _Link()
    uart = UART16550()
    uart.attach(link)
    con = HostConsole(slave, uart, pace=False)
    con.attach(link)
    return master, slave, link, uart, con


def test_console_feeds_typed_bytes_and_ctrl_a_x_quits():
    master, slave, link, uart, con = _console()
    try:
        with raw_terminal(slave):
            os.write(master, b"ls" + bytes([CTRL_A, CTRL_A]) + b"\r")
            time.sleep(0.05)
            con.poll(0.5)
            got = bytes(uart.rx) + bytes(uart.backlog)
            assert got == b"ls\x01\r"
            assert link.stops == []
            os.write(master, b"a" + bytes([CTRL_A]) + b"x" + b"zzz")
            time.sleep(0.05)
            con.poll(0.5)
            assert link.stops == [("quit", 0)]
            assert (bytes(uart.rx) + bytes(uart.backlog)).endswith(b"a")
    finally:
        os.close(master)
        os.close(slave)


def test_raw_terminal_sets_raw_and_restores_even_on_error():
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ICANON and before[3] & termios.ECHO
        with pytest.raises(RuntimeError):
            with raw_terminal(slave):
                now = termios.tcgetattr(slave)
                assert not now[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
                raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_console_paces_virtual_time_to_the_wall_clock():
    master, slave, link, uart, con = _console()
    try:
        clock = [100.0]
        con.clock = lambda: clock[0]
        con.pace = True
        con.tick(0)                      # starts the wall clock
        t0 = time.monotonic()
        con.tick(link.cpu_hz // 50)      # guest jumped 20 ms ahead of the wall clock
        waited = time.monotonic() - t0
        assert 0.015 <= waited < 0.5
        t0 = time.monotonic()
        clock[0] += 1.0                  # wall clock far ahead: no wait
        con.tick(link.cpu_hz // 50)
        assert time.monotonic() - t0 < 0.01
    finally:
        os.close(master)
        os.close(slave)


ECHO_GUEST = """
    mov dx, 0x3f9; mov al, 0; out dx, al
l:  mov dx, 0x3fd; in al, dx; test al, 1; jz l
    mov dx, 0x3f8; in al, dx; out dx, al
    jmp l
"""


def _read_until(fd: int, want: bytes, timeout: float) -> bytes:
    out = b""
    end = time.monotonic() + timeout
    while want not in out and time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out


def test_bt_run_on_a_pty_is_raw_echoes_keys_and_quits_with_ctrl_a_x(tmp_path):
    """bt-run on a terminal: keystrokes reach COM1 without waiting for Enter
    (raw mode), Ctrl-A x ends the run with status 0, and the terminal is restored."""
    img = tmp_path / "echo.bin"
    img.write_bytes(_asm(ECHO_GUEST))
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "bt.cli.run", str(img), "--format", "raw",
                             "--load", "0x1000", "--mem", "4"],
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE, cwd=REPO)
    try:
        # Type only once raw mode is on: before it, the terminal itself echoes
        # "hi" (so the echo would prove nothing).
        end = time.monotonic() + 30
        while termios.tcgetattr(slave)[3] & termios.ICANON and time.monotonic() < end:
            time.sleep(0.05)
        assert not termios.tcgetattr(slave)[3] & termios.ICANON, "bt-run never entered raw mode"
        os.write(master, b"hi")           # no newline: only raw mode passes it on
        echoed = _read_until(master, b"hi", 20)
        assert b"hi" in echoed, echoed
        os.write(master, bytes([CTRL_A]) + b"x")
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("no quit after Ctrl-A x: " + proc.stderr.read().decode()[-1500:])
        err = proc.stderr.read().decode()
        assert status == 0, err
        assert "quit" in err
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
