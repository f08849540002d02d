"""The 8259's native mask and EOI (runtime/_iofast.c, "The 8259's mask and
EOI") against the Python model alone: random sequences of port accesses,
device requests and INTA cycles go to a PICPair whose registers the C hooks
share (its slow path is the model's own read/write) and to a second PICPair
that sees every access in Python.  After every step both have the same
registers and modes, the same interrupt line (has_interrupt, the vector an
INTA would give), and every read returned the same value; and an access
answered natively found the line low and left it low (the VM does nothing
after it: runtime/vm.py _after_device_access).
"""
from __future__ import annotations

import ctypes
import random

import pytest

from runtime import _iofast
from runtime.devices.pic import PICPair

_IN = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
_OUT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                        ctypes.c_void_p)
PORTS = (0x20, 0x21, 0xA0, 0xA1)


class Native:
    """A PICPair behind the C in/out hooks, called as the engine calls them."""

    def __init__(self):
        self.pic = PICPair()
        self.exits = 0
        self._slow_in = _IN(self._exit_in)
        self._slow_out = _OUT(self._exit_out)
        self.c = _iofast.IoFast(ctypes.cast(self._slow_in, ctypes.c_void_p).value,
                                ctypes.cast(self._slow_out, ctypes.c_void_p).value)
        self.c.publish_pic(self.pic.registers)
        fin, fout = _iofast.callbacks()
        self._in, self._out = _IN(fin), _OUT(fout)

    def _exit_in(self, _uc, port, size, _ud):
        self.exits += 1
        return self.pic.read(port, size)

    def _exit_out(self, _uc, port, size, value, _ud):
        self.exits += 1
        self.pic.write(port, size, value)

    def read(self, port: int) -> int:
        return self._in(None, port, 1, id(self.c))

    def write(self, port: int, value: int) -> None:
        self._out(None, port, 1, value, id(self.c))


def _chip_state(chip) -> dict:
    return {k: v for k, v in vars(chip).items() if k not in ("_regs", "cascade_in")}


def _same(native: Native, ref: PICPair) -> None:
    pic = native.pic
    assert pic.registers == ref.registers
    for a, b in ((pic.master, ref.master), (pic.slave, ref.slave)):
        assert _chip_state(a) == _chip_state(b)
        assert (a.irr, a.imr, a.isr, a.lowest, a._init_step) == (b.irr, b.imr, b.isr, b.lowest, b._init_step)
    assert pic.has_interrupt() == ref.has_interrupt()


def _command(rng: random.Random) -> int:
    return rng.choice([0x20, 0x20, 0x60 | rng.randrange(8), 0x60 | rng.randrange(8), 0xA0,
                       0xE0 | rng.randrange(8), 0xC0 | rng.randrange(8), 0x0A, 0x0B, 0x0C, 0x68,
                       0x48, 0x11, 0x13, rng.randrange(256)])


def _step(rng: random.Random, native: Native, ref: PICPair) -> None:
    line, answered = ref.has_interrupt(), native.c.pic_native
    wrote = _access(rng, native, ref)
    if wrote and native.c.pic_native != answered:
        # written without the VM's after-access work (runtime/vm.py
        # _after_device_access): only right where the line stayed low
        assert not line and not ref.has_interrupt()


def _access(rng: random.Random, native: Native, ref: PICPair) -> bool:
    """One random step; True if it was a port write."""
    op = rng.randrange(10)
    if op < 3:                                        # a mask write, often one bit away
        port = rng.choice((0x21, 0xA1))
        chip = ref.master if port == 0x21 else ref.slave
        value = chip.imr ^ (1 << rng.randrange(8)) if rng.random() < 0.7 else rng.randrange(256)
        native.write(port, value)
        ref.write(port, 1, value)
        return True
    if op < 5:
        port = rng.choice((0x20, 0xA0))
        value = _command(rng)
        native.write(port, value)
        ref.write(port, 1, value)
        return True
    if op < 7:
        port = rng.choice(PORTS)
        assert native.read(port) == ref.read(port, 1)
    elif op < 8:
        line = rng.choice((0, 0, 1, 4, 8, 12, 14, rng.randrange(16)))
        native.pic.raise_irq(line)
        ref.raise_irq(line)
    elif op < 9:
        line = rng.randrange(16)
        native.pic.lower_irq(line)
        ref.lower_irq(line)
    elif ref.has_interrupt():
        assert native.pic.acknowledge() == ref.acknowledge()
    return False


def _init(target) -> None:
    """Linux's init_8259A: vectors 0x30/0x38, cascade on 2, everything masked."""
    for port, value in ((0x21, 0xFF), (0xA1, 0xFF), (0x20, 0x11), (0x21, 0x30), (0x21, 0x04),
                        (0x21, 0x01), (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01),
                        (0x21, 0xFA), (0xA1, 0xFF)):
        target(port, value)


@pytest.mark.parametrize("seed", range(8))
def test_native_pic_matches_the_python_model(seed):
    rng = random.Random(seed)
    native, ref = Native(), PICPair()
    _init(native.write)
    _init(lambda port, value: ref.write(port, 1, value))
    _same(native, ref)
    for _ in range(3000):
        _step(rng, native, ref)
        _same(native, ref)
    accesses = native.c.pic_native + native.exits
    # Both sides of the rule ran: answered natively and exited.
    assert native.c.pic_native > accesses // 10
    assert native.exits > accesses // 10


def test_writes_that_could_change_the_line_exit():
    native = Native()
    _init(native.write)
    native.pic.raise_irq(0)                                     # IRQ 0 pending, unmasked
    before = native.exits
    native.write(0x21, 0xFB)                                    # masks it: the line drops
    native.write(0x21, 0xFA)                                    # unmasks it: the line rises
    native.write(0x20, 0x20)                                    # an EOI with a request waiting
    assert native.exits - before == 3
    assert native.pic.has_interrupt()
    assert native.pic.acknowledge() == 0x30
    # IRQ 0 in service, nothing in IRR: the tick's mask, EOI and unmask are native.
    n = native.c.pic_native
    assert native.read(0x21) == 0xFA
    native.write(0x21, 0xFB)
    native.write(0x20, 0x60)
    native.write(0x21, 0xFA)
    assert native.c.pic_native - n == 4 and native.exits - before == 3
    assert native.pic.master.isr == 0 and native.pic.master.imr == 0xFA
    # A mask write that leaves a waiting request masked is native too, one
    # that unmasks it exits.
    native.pic.raise_irq(3)                                     # masked (0xFA)
    native.write(0x21, 0xFE)
    assert native.exits - before == 3 and not native.pic.has_interrupt()
    native.write(0x21, 0xF6)
    assert native.exits - before == 4 and native.pic.has_interrupt()


def test_nothing_is_native_during_initialisation():
    native = Native()
    native.write(0x20, 0x11)                                    # ICW1: the data port takes ICW2-4
    for value in (0x30, 0x04, 0x01):
        native.write(0x21, value)
    assert native.c.pic_native == 0 and native.exits == 4
    assert native.pic.master.vector_base == 0x30
    assert native.read(0x21) == 0 and native.c.pic_native == 1  # operational again: IMR reads
