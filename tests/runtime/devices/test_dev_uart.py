import pytest

from bt.errors import BadInput
from runtime.devices.pic import PICPair
from runtime.devices.uart import ScriptedInput, UART16550

from devlink import FakeLink, bus_with

B = 0x3F8
THR, IER, IIR, FCR, LCR, MCR, LSR, MSR, SCR = B, B + 1, B + 2, B + 2, B + 3, B + 4, B + 5, B + 6, B + 7


def make(pic=None, base=B, irq=4):
    uart = UART16550(base=base, irq=irq)
    link = FakeLink(pic=pic)
    devices = [uart] + ([pic] if pic else [])
    bus, link = bus_with(*devices, link=link)
    return uart, bus, link


def test_thr_output_and_lsr():
    uart, bus, link = make()
    for b in b"hi\n":
        assert bus.read(LSR, 1) & 0x60 == 0x60      # THRE | TEMT
        bus.write(THR, 1, b)
    assert bytes(link.serial) == b"hi\n"
    assert bus.read(LSR, 1) == 0x60
    assert bus.read(THR, 1) == 0                    # nothing received


def test_scratch_and_ier_probe_like_linux():
    uart, bus, link = make()
    bus.write(SCR, 1, 0xA5)
    assert bus.read(SCR, 1) == 0xA5
    bus.write(IER, 1, 0x00)
    assert bus.read(IER, 1) & 0x0F == 0
    bus.write(IER, 1, 0xFF)
    assert bus.read(IER, 1) == 0x0F                 # only four bits exist


def test_dlab_divisor_latch():
    uart, bus, link = make()
    bus.write(LCR, 1, 0x80)
    bus.write(B, 1, 0x01)
    bus.write(B + 1, 1, 0x00)
    assert (bus.read(B, 1), bus.read(B + 1, 1)) == (0x01, 0x00)
    bus.write(LCR, 1, 0x03)                         # 8N1, DLAB off
    assert bus.read(LCR, 1) == 0x03
    assert bus.read(IER, 1) == 0
    assert uart.dll == 1 and not link.serial        # divisor writes are not output


def test_loopback_msr_and_data():
    uart, bus, link = make()
    bus.write(MCR, 1, 0x10 | 0x0A)                  # loop + RTS + OUT2: Linux's probe
    assert bus.read(MSR, 1) & 0xF0 == 0x90          # CTS + DCD
    bus.write(MCR, 1, 0x1F)
    assert bus.read(MSR, 1) & 0xF0 == 0xF0
    bus.write(THR, 1, 0x5A)
    assert not link.serial                           # nothing on the wire
    assert bus.read(LSR, 1) & 0x01
    assert bus.read(B, 1) == 0x5A
    assert not bus.read(LSR, 1) & 0x01
    bus.write(MCR, 1, 0x0B)                          # loop off
    assert bus.read(MSR, 1) & 0xF0 == 0xB0           # a terminal: CTS, DSR, DCD


def test_loopback_msr_deltas():
    uart, bus, link = make()
    bus.write(MCR, 1, 0x10)
    bus.read(MSR, 1)                                 # clear deltas from entering loop
    bus.write(MCR, 1, 0x10 | 0x02 | 0x04)            # RTS on, OUT1 (RI) on
    assert bus.read(MSR, 1) == 0x10 | 0x40 | 0x01    # CTS, RI, DCTS
    bus.write(MCR, 1, 0x10)                          # RTS off, RI falls
    assert bus.read(MSR, 1) == 0x01 | 0x04           # DCTS, TERI
    assert bus.read(MSR, 1) == 0x00


def test_loopback_overrun_sets_oe():
    uart, bus, link = make()
    bus.write(MCR, 1, 0x10)
    bus.write(THR, 1, 1)
    bus.write(THR, 1, 2)                             # FIFO off: one-byte holding register
    assert bus.read(LSR, 1) & 0x03 == 0x03
    assert bus.read(LSR, 1) & 0x02 == 0              # OE clears on read


def test_fifo_detection_via_iir():
    uart, bus, link = make()
    assert bus.read(IIR, 1) == 0x01
    bus.write(FCR, 1, 0x01)
    assert bus.read(IIR, 1) >> 6 == 3                # 16550A
    bus.write(FCR, 1, 0x00)
    assert bus.read(IIR, 1) == 0x01


def test_thre_interrupt_protocol_linux_startup_test():
    """serial8250_do_startup's check that THRE re-asserts when ETBEI is toggled."""
    uart, bus, link = make()
    bus.write(MCR, 1, 0x0B)                          # DTR RTS OUT2
    bus.write(IER, 1, 0x02)
    iir1 = bus.read(IIR, 1)
    bus.write(IER, 1, 0x00)
    bus.write(IER, 1, 0x02)
    iir = bus.read(IIR, 1)
    bus.write(IER, 1, 0x00)
    assert iir1 & 0x0F == 0x02 and iir & 0x0F == 0x02
    # Reading IIR acknowledged it:
    bus.write(IER, 1, 0x02)
    assert bus.read(IIR, 1) == 0x02
    assert bus.read(IIR, 1) == 0x01
    # Setting IER again with ETBEI already on does not re-arm.
    bus.write(IER, 1, 0x03)
    assert bus.read(IIR, 1) == 0x01
    # Writing THR re-arms at once (instant transmission).
    bus.write(THR, 1, ord("x"))
    assert bus.read(IIR, 1) == 0x02


def test_irq_line_follows_thre_and_out2_gate():
    uart, bus, link = make()
    bus.write(IER, 1, 0x02)                          # pending, but OUT2 clear
    assert link.irq_log == []
    bus.write(MCR, 1, 0x08)                          # OUT2 connects the line
    assert link.irq_log == [("raise", 4)]
    bus.read(IIR, 1)                                 # acknowledge THRE
    assert link.irq_log[-1] == ("lower", 4)
    bus.write(THR, 1, 0x41)                          # re-arms: a fresh edge
    assert link.irq_log[-1] == ("raise", 4)
    n = len(link.irq_log)
    bus.write(THR, 1, 0x42)                          # line was high: drops and rises
    assert link.irq_log[n:] == [("lower", 4), ("raise", 4)]
    bus.write(IER, 1, 0x00)                          # stop_tx
    assert link.irq_log[-1] == ("lower", 4)
    bus.write(IER, 1, 0x02)
    bus.write(MCR, 1, 0x18)                          # loopback disconnects the line
    assert link.irq_log[-1] == ("lower", 4)


def test_interrupt_driven_tx_through_pic():
    """Linux's userland output path: bytes leave only from the IRQ 4 handler."""
    pic = PICPair()
    uart, bus, link = make(pic=pic)
    for port, v in ((0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01),
                    (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01)):
        bus.write(port, 1, v)
    bus.write(MCR, 1, 0x0B)
    bus.write(FCR, 1, 0x07)
    pending = list(b"hello from init\n")
    bus.write(IER, 1, 0x05 | 0x02)                   # start_tx
    handled = 0
    while pic.has_interrupt():
        assert pic.acknowledge() == 0x34
        handled += 1
        while True:                                  # serial8250_handle_irq
            iir = bus.read(IIR, 1)
            if iir & 0x01:
                break
            assert iir & 0x0F == 0x02
            for _ in range(16):
                if not pending:
                    break
                bus.write(THR, 1, pending.pop(0))
            if not pending:
                bus.write(IER, 1, 0x05)              # __stop_tx
        bus.write(0x20, 1, 0x64)                     # specific EOI for IRQ4
        assert handled < 5
    assert bytes(link.serial) == b"hello from init\n"
    assert not pic.has_interrupt()


def test_receive_with_feed_and_data_interrupt():
    uart, bus, link = make()
    bus.write(MCR, 1, 0x08)
    bus.write(FCR, 1, 0x01)
    bus.write(IER, 1, 0x01)
    uart.feed(b"ls\n")
    assert link.irq_log == [("raise", 4)]
    assert bus.read(IIR, 1) == 0xC4
    out = bytearray()
    while bus.read(LSR, 1) & 0x01:
        out.append(bus.read(B, 1))
    assert out == b"ls\n"
    assert bus.read(IIR, 1) == 0xC1
    assert link.irq_log[-1] == ("lower", 4)


def test_rx_priority_over_thre():
    uart, bus, link = make()
    bus.write(IER, 1, 0x03)
    uart.feed(b"a")
    assert bus.read(IIR, 1) == 0x04
    assert bus.read(B, 1) == ord("a")
    assert bus.read(IIR, 1) == 0x02


def test_feed_never_overruns_and_fifo_fill_levels():
    uart, bus, link = make()
    uart.feed(bytes(range(40)))
    assert len(uart.rx) == 1                          # FIFO off: holding register only
    bus.write(FCR, 1, 0x01)                           # enabling FIFOs clears them...
    assert len(uart.rx) == 16                         # ...and the wire refills them
    got = bytearray()
    while bus.read(LSR, 1) & 0x01:
        got.append(bus.read(B, 1))
    assert got == bytes(range(1, 40))                 # byte 0 was in the cleared FIFO
    assert not bus.read(LSR, 1) & 0x02


def test_scripted_input_starts_when_rx_interrupt_enabled():
    uart, bus, link = make()
    uart.set_scripted_input(b"ab", interval=1000)
    assert uart.next_event() is None                 # nobody listening yet
    link.t = 5000
    bus.write(IER, 1, 0x01)
    assert uart.next_event() == 6000
    uart.tick(5999)
    assert not bus.read(LSR, 1) & 0x01
    uart.tick(6000)
    assert bus.read(B, 1) == ord("a")
    assert uart.next_event() == 7000
    uart.tick(9000)
    assert bus.read(B, 1) == ord("b")
    assert uart.next_event() is None and uart.script.done
    link.t = 20000
    bus.write(IER, 1, 0x00)
    bus.write(IER, 1, 0x01)
    assert uart.script.start == 5000                 # the clock starts once


def test_scripted_input_late_tick_releases_all_due_bytes_in_order():
    s = ScriptedInput(b"xyz", interval=10)
    s.begin(100)
    assert s.due(125) == b"xy"
    assert s.next_time() == 130
    assert s.due(129) == b""
    assert s.due(10_000) == b"z"
    with pytest.raises(BadInput):
        ScriptedInput(b"x", 0)


def test_com2_base_parameter():
    uart, bus, link = make(base=0x2F8, irq=3)
    bus.write(0x2F8 + 4, 1, 0x08)
    bus.write(0x2F9, 1, 0x02)
    bus.write(0x2F8, 1, ord("Z"))
    assert bytes(link.serial) == b"Z"
    assert ("raise", 3) in link.irq_log
    assert bus.read(0x3F8, 1) == 0xFF                # COM1 absent here
