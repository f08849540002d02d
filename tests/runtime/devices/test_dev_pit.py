import math
from fractions import Fraction

from bt.machine import PIT_HZ
from runtime.devices.pit import PIT, instr_at_tick, pit_ticks
from runtime.devices.port61 import SystemControlB

from devlink import FakeLink, bus_with

HZ = 100_000_000
LATCH = 4773            # Linux HZ=250: (PIT_HZ + 125) // 250


def make(cpu_hz=HZ):
    pit = PIT()
    p61 = SystemControlB(pit)
    bus, link = bus_with(pit, p61, link=FakeLink(cpu_hz))
    return pit, bus, link


def program(bus, control, count=None, port=0x40):
    bus.write(0x43, 1, control)
    if count is not None:
        bus.write(port, 1, count & 0xFF)
        bus.write(port, 1, count >> 8)


def test_time_conversion_is_exact():
    for hz in (HZ, 3_000_000, 1_193_182, 7):
        for ticks in (0, 1, 4773, 10**9 + 7):
            i = instr_at_tick(ticks, hz)
            assert i == math.ceil(Fraction(ticks * hz, PIT_HZ))
            assert pit_ticks(i, hz) >= ticks
            assert i == 0 or pit_ticks(i - 1, hz) < ticks


def test_mode2_periodic_irq0_next_event_exact():
    pit, bus, link = make()
    link.t = 1000                               # 11 PIT ticks have elapsed
    program(bus, 0x34, LATCH)                   # channel 0, lo/hi, mode 2
    assert pit.next_event() == 400945           # ceil((11 + 4773) * 1e8 / 1193182)
    pit.tick(400944)
    assert link.raised(0) == 0
    pit.tick(400945)
    assert link.raised(0) == 1
    assert pit.next_event() == 800968           # tick 11 + 2 * 4773
    pit.tick(800967)
    assert link.raised(0) == 1
    pit.tick(800968)
    assert link.raised(0) == 2


def test_mode3_same_period_and_coalescing():
    pit, bus, link = make()
    program(bus, 0x36, LATCH)                   # mode 3 (square wave)
    first = pit.next_event()
    assert first == instr_at_tick(LATCH, HZ) == 400023
    late = instr_at_tick(10 * LATCH + 5, HZ)    # a long slice overshoots 10 periods
    pit.tick(late)
    assert link.raised(0) == 1                  # merged into one request, like IRR
    assert pit.stats()["irq0_coalesced"] == 9
    assert pit.next_event() == instr_at_tick(11 * LATCH, HZ)


def test_count_readback_mode2_and_latch():
    pit, bus, link = make()
    program(bus, 0x34, LATCH)
    link.t = instr_at_tick(100, HZ)             # 100 clocks after load
    bus.write(0x43, 1, 0x00)                    # latch channel 0
    link.t = instr_at_tick(3000, HZ)            # the latch holds while time moves on
    lo = bus.read(0x40, 1)
    hi = bus.read(0x40, 1)
    assert lo | hi << 8 == LATCH - 100
    # Unlatched reads follow time: lo then hi.
    lo = bus.read(0x40, 1)
    hi = bus.read(0x40, 1)
    assert lo | hi << 8 == LATCH - 3000
    link.t = instr_at_tick(LATCH + 7, HZ)       # wrapped into the second period
    bus.write(0x43, 1, 0x00)
    assert bus.read(0x40, 1) | bus.read(0x40, 1) << 8 == LATCH - 7


def test_lo_only_and_hi_only_access():
    pit, bus, link = make()
    bus.write(0x43, 1, 0x14)                    # channel 0, lo only, mode 2
    bus.write(0x40, 1, 200)
    assert pit.channels[0].reload == 200
    link.t = instr_at_tick(50, HZ)
    assert bus.read(0x40, 1) == 150
    assert bus.read(0x40, 1) == 150             # lo-only: no flip-flop
    bus.write(0x43, 1, 0x24)                    # hi only
    bus.write(0x40, 1, 0x12)
    assert pit.channels[0].reload == 0x1200
    link.t += instr_at_tick(0x100, HZ)
    assert bus.read(0x40, 1) == 0x11


def test_reload_zero_means_65536():
    pit, bus, link = make()
    program(bus, 0x34, 0)
    assert pit.next_event() == instr_at_tick(65536, HZ)


def test_mode0_one_shot():
    pit, bus, link = make()
    program(bus, 0x30, 1000)                    # mode 0
    assert pit.next_event() == instr_at_tick(1000, HZ)
    pit.tick(pit.next_event())
    assert link.raised(0) == 1
    assert pit.next_event() is None
    link.t = instr_at_tick(1005, HZ)
    bus.write(0x43, 1, 0x00)
    assert bus.read(0x40, 1) | bus.read(0x40, 1) << 8 == 0x10000 - 5   # counts on past 0


def test_control_word_stops_channel0():
    pit, bus, link = make()
    program(bus, 0x34, LATCH)
    bus.write(0x43, 1, 0x30)                    # new mode, no count yet
    assert pit.next_event() is None


def test_channel2_calibration_via_port61():
    """Linux's pit_calibrate_tsc: gate on, mode 0, poll bit 5 of port 0x61."""
    pit, bus, link = make()
    link.t = 12345
    bus.write(0x61, 1, (bus.read(0x61, 1) & ~0x02) | 0x01)
    program(bus, 0xB0, 11932, port=0x42)        # channel 2, lo/hi, mode 0: ~10 ms
    start = pit_ticks(link.t, HZ)
    assert not bus.read(0x61, 1) & 0x20
    link.t = instr_at_tick(start + 11931, HZ)
    assert not bus.read(0x61, 1) & 0x20
    link.t = instr_at_tick(start + 11932, HZ)
    assert bus.read(0x61, 1) & 0x20
    assert link.raised(0) == 0                  # channel 2 has no IRQ


def test_channel2_gate_low_pauses_mode0():
    pit, bus, link = make()
    bus.write(0x61, 1, 0x01)
    program(bus, 0xB0, 1000, port=0x42)
    link.t = instr_at_tick(400, HZ)
    bus.write(0x61, 1, 0x00)                    # gate off at 400 clocks
    link.t = instr_at_tick(5000, HZ)
    assert not bus.read(0x61, 1) & 0x20
    assert bus.read(0x42, 1) | bus.read(0x42, 1) << 8 == 600
    bus.write(0x61, 1, 0x01)                    # resume at 5000
    link.t = instr_at_tick(5000 + 600, HZ)
    assert bus.read(0x61, 1) & 0x20


def test_channel2_gate_closed_before_programming_does_not_count():
    pit, bus, link = make()
    program(bus, 0xB0, 100, port=0x42)          # gate still low
    link.t = instr_at_tick(1000, HZ)
    assert not bus.read(0x61, 1) & 0x20
    bus.write(0x61, 1, 0x01)
    link.t = instr_at_tick(1100, HZ)
    assert bus.read(0x61, 1) & 0x20


def test_quick_pit_calibrate_msb_decreases():
    pit, bus, link = make()
    bus.write(0x61, 1, 0x01)
    program(bus, 0xB0, 0xFFFF, port=0x42)
    msbs = []
    for k in range(5):
        link.t = instr_at_tick(256 * k + 10, HZ)
        bus.read(0x42, 1)
        msbs.append(bus.read(0x42, 1))
    assert msbs == [0xFF, 0xFE, 0xFD, 0xFC, 0xFB]


def test_port61_bits_read_back():
    pit, bus, link = make()
    bus.write(0x61, 1, 0xFF)
    v = bus.read(0x61, 1)
    assert v & 0x0F == 0x0F
    p61 = bus.owner(0x61)
    assert p61.speaker_on
    # The refresh bit toggles every 18 PIT clocks.
    link.t = instr_at_tick(18, HZ)
    a = bus.read(0x61, 1) & 0x10
    link.t = instr_at_tick(36, HZ)
    b = bus.read(0x61, 1) & 0x10
    assert a != b


def test_readback_status_and_count():
    pit, bus, link = make()
    program(bus, 0x34, LATCH)
    link.t = instr_at_tick(10, HZ)
    bus.write(0x43, 1, 0xC2)                    # read-back: count + status of channel 0
    status = bus.read(0x40, 1)
    assert status == 0x80 | 0x30 | 0x04         # OUT high, lo/hi, mode 2, binary
    assert bus.read(0x40, 1) | bus.read(0x40, 1) << 8 == LATCH - 10
    bus.write(0x43, 1, 0xB0)                    # channel 2 mode 0: OUT low at once
    bus.write(0x43, 1, 0xE8)                    # read-back status only, channel 2
    assert bus.read(0x42, 1) == 0x40 | 0x30     # OUT low, null count, lo/hi, mode 0


def test_bcd_counting():
    pit, bus, link = make()
    program(bus, 0x35, 0x1000)                  # mode 2, BCD: 1000 clocks
    assert pit.next_event() == instr_at_tick(1000, HZ)
    link.t = instr_at_tick(1, HZ)
    bus.write(0x43, 1, 0x00)
    assert bus.read(0x40, 1) | bus.read(0x40, 1) << 8 == 0x0999


def test_mode3_count_runs_down_by_two():
    pit, bus, link = make()
    program(bus, 0x36, 100)
    values = []
    for tick in (0, 1, 49, 50, 51, 99):
        link.t = instr_at_tick(tick, HZ)
        bus.write(0x43, 1, 0x00)
        values.append(bus.read(0x40, 1) | bus.read(0x40, 1) << 8)
    assert values == [100, 98, 2, 100, 98, 2]


def test_same_program_gives_same_events_for_other_clock_rates():
    for hz in (50_000_000, 123_456_789):
        pit, bus, link = make(hz)
        program(bus, 0x34, LATCH)
        times = []
        for _ in range(20):
            ev = pit.next_event()
            pit.tick(ev)
            times.append(ev)
        assert link.raised(0) == 20
        assert times == [math.ceil(Fraction(k * LATCH * hz, PIT_HZ)) for k in range(1, 21)]


def test_mode4_oneshot_clockevent_like_linux():
    """Linux's i8253 clockevent in one-shot mode: 0x38, then a count per event."""
    pit, bus, link = make()
    bus.write(0x43, 1, 0x38)                    # mode 4, lo/hi
    assert pit.next_event() is None
    link.t = 777
    start = pit_ticks(777, HZ)
    bus.write(0x40, 1, 100)
    bus.write(0x40, 1, 0)
    # OUT strobes low at count 0 and rises one clock later: that edge is IRQ 0.
    assert pit.next_event() == instr_at_tick(start + 101, HZ)
    pit.tick(pit.next_event())
    assert link.raised(0) == 1 and pit.next_event() is None
    link.t = instr_at_tick(start + 500, HZ)
    bus.write(0x40, 1, 50)
    bus.write(0x40, 1, 0)                       # next event re-arms
    assert pit.next_event() == instr_at_tick(start + 551, HZ)


def test_irq_edges_reach_the_pic():
    from runtime.devices.pic import PICPair
    pic = PICPair()
    pit = PIT()
    link = FakeLink(HZ, pic=pic)
    bus, _ = bus_with(pic, pit, link=link)
    for port, v in ((0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE)):
        bus.write(port, 1, v)
    program(bus, 0x34, LATCH)
    bus.tick(bus.next_event())
    assert pic.has_interrupt() and pic.acknowledge() == 0x30
