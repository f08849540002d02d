from runtime.devices.pic import PICPair

from devlink import bus_with


def init_linux_style(bus, master_base=0x30, slave_base=0x38, icw4=0x01):
    """The sequence Linux's init_8259A sends (vectors 0x30/0x38)."""
    bus.write(0x21, 1, 0xFF)
    bus.write(0xA1, 1, 0xFF)
    bus.write(0x20, 1, 0x11)          # ICW1: edge, cascade, ICW4
    bus.write(0x21, 1, master_base)   # ICW2
    bus.write(0x21, 1, 0x04)          # ICW3: slave on IR2
    bus.write(0x21, 1, icw4)          # ICW4
    bus.write(0xA0, 1, 0x11)
    bus.write(0xA1, 1, slave_base)
    bus.write(0xA1, 1, 0x02)          # ICW3: cascade identity 2
    bus.write(0xA1, 1, icw4)


def make(**kw):
    pic = PICPair()
    bus, link = bus_with(pic)
    init_linux_style(bus, **kw)
    return pic, bus


def test_init_sets_vector_base_and_clears_mask():
    pic, bus = make()
    assert bus.read(0x21, 1) == 0 and bus.read(0xA1, 1) == 0
    assert pic.master.vector_base == 0x30 and pic.slave.vector_base == 0x38
    pic.raise_irq(0)
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x30
    assert not pic.has_interrupt()
    # Slave IRQ 14 -> vector base + 6, once IRQ0 (higher than the cascade) has ended.
    pic.raise_irq(14)
    assert not pic.has_interrupt()
    bus.write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x3E


def test_masked_before_init_and_mask_register():
    pic = PICPair()
    pic.raise_irq(0)
    assert not pic.has_interrupt()          # masked until programmed
    pic, bus = make()
    bus.write(0x21, 1, 0x01)                # mask IRQ0
    pic.raise_irq(0)
    assert not pic.has_interrupt()
    bus.write(0x21, 1, 0x00)
    assert pic.has_interrupt()
    assert bus.read(0x21, 1) == 0x00


def test_priority_and_in_service_blocking():
    pic, bus = make()
    pic.raise_irq(3)
    pic.raise_irq(1)
    assert pic.acknowledge() == 0x31        # IRQ1 before IRQ3
    # IRQ3 is lower priority than in-service IRQ1: blocked.
    assert not pic.has_interrupt()
    pic.raise_irq(0)                        # higher priority than IRQ1: nests
    assert pic.acknowledge() == 0x30
    # IRQ1 again while IRQ1 in service: equal priority -> blocked.
    bus.write(0x20, 1, 0x20)                # non-specific EOI ends IRQ0 (highest in service)
    pic.raise_irq(1)
    assert not pic.has_interrupt()
    assert pic.master.isr == 0x02
    bus.write(0x20, 1, 0x20)                # ends IRQ1
    assert pic.acknowledge() == 0x31        # IRQ1 wins over pending IRQ3
    bus.write(0x20, 1, 0x61)                # specific EOI for IRQ1
    assert pic.acknowledge() == 0x33


def test_specific_eoi_clears_only_its_level():
    pic, bus = make()
    pic.raise_irq(4)
    pic.acknowledge()
    pic.raise_irq(0)
    pic.acknowledge()
    assert pic.master.isr == 0x11
    bus.write(0x20, 1, 0x64)                # specific EOI IRQ4 (not the highest)
    assert pic.master.isr == 0x01


def test_ocw3_reads_irr_and_isr():
    pic, bus = make()
    pic.raise_irq(5)
    pic.raise_irq(6)
    bus.write(0x20, 1, 0x0A)                # read IRR
    assert bus.read(0x20, 1) == 0x60
    pic.acknowledge()
    assert bus.read(0x20, 1) == 0x40
    bus.write(0x20, 1, 0x0B)                # read ISR
    assert bus.read(0x20, 1) == 0x20


def test_cascade_and_linux_eoi_sequence():
    pic, bus = make()
    pic.raise_irq(8)
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x38
    assert pic.master.isr == 0x04 and pic.slave.isr == 0x01
    pic.raise_irq(3)                        # lower priority than IR2 in service
    assert not pic.has_interrupt()
    bus.write(0xA0, 1, 0x60)                # specific EOI on slave, IRQ0 of slave
    bus.write(0x20, 1, 0x62)                # specific EOI cascade on master
    assert pic.acknowledge() == 0x33


def test_slave_masked_line_and_cascade_mask():
    pic, bus = make()
    bus.write(0xA1, 1, 0x01)                # mask IRQ8
    pic.raise_irq(8)
    assert not pic.has_interrupt()
    bus.write(0xA1, 1, 0x00)
    bus.write(0x21, 1, 0x04)                # mask the cascade line itself
    assert not pic.has_interrupt()
    bus.write(0x21, 1, 0x00)
    assert pic.acknowledge() == 0x38


def test_spurious_when_request_withdrawn():
    pic, bus = make()
    pic.raise_irq(4)
    assert pic.has_interrupt()
    pic.lower_irq(4)
    assert not pic.has_interrupt()
    assert pic.acknowledge() == 0x37        # spurious IRQ7, nothing put in service
    assert pic.master.isr == 0
    # From the slave: spurious 15, master IR2 stays in service (as on real chips).
    pic.raise_irq(12)
    master_line = pic.master.pending()
    assert master_line == 2
    pic.lower_irq(12)
    pic.raise_irq(12)
    pic.lower_irq(12)
    assert pic.acknowledge() == 0x37        # withdrawn before INTA -> master spurious
    assert pic.stats()["spurious"] == 2


def test_slave_spurious_15():
    pic, _ = make()
    pic.raise_irq(9)
    # The master saw IR2 (derived live from the slave); simulate the slave losing it
    # between the master's decision and the slave's answer by masking at the slave.
    line = pic.master.pending()
    assert line == 2
    pic.master.ack(2)
    assert pic.slave.pending() == 1
    pic.slave.irr = 0
    pic.master.isr = 0
    pic.raise_irq(9)
    orig = pic.slave.pending
    calls = []

    def vanishing():
        calls.append(1)
        return orig() if len(calls) == 1 else None
    pic.slave.pending = vanishing
    assert pic.acknowledge() == 0x3F
    assert pic.master.isr == 0x04


def test_auto_eoi():
    pic, bus = make(icw4=0x03)
    pic.raise_irq(1)
    assert pic.acknowledge() == 0x31
    assert pic.master.isr == 0
    pic.raise_irq(3)
    assert pic.acknowledge() == 0x33        # not blocked: nothing in service


def test_edge_requests_merge_while_pending():
    pic, _ = make()
    pic.raise_irq(0)
    pic.raise_irq(0)
    assert pic.acknowledge() == 0x30
    pic.master.isr = 0
    assert not pic.has_interrupt()          # two edges before INTA -> one request


def test_rotation_and_set_priority():
    pic, bus = make()
    bus.write(0x20, 1, 0xC3)                # set priority: IRQ3 lowest, IRQ4 highest
    pic.raise_irq(0)
    pic.raise_irq(5)
    assert pic.acknowledge() == 0x35
    bus.write(0x20, 1, 0xA0)                # rotate on non-specific EOI: IRQ5 lowest
    assert pic.master.lowest == 5
    pic.raise_irq(5)
    assert pic.acknowledge() == 0x30        # IRQ0 now ahead of IRQ5


def test_poll_command():
    pic, bus = make()
    pic.raise_irq(6)
    bus.write(0x20, 1, 0x0C)                # OCW3 poll
    assert bus.read(0x20, 1) == 0x86
    assert pic.master.isr == 0x40
    bus.write(0x20, 1, 0x0C)
    assert bus.read(0x20, 1) == 0x00        # nothing pending


def test_special_mask_mode_lets_lower_levels_through():
    pic, bus = make()
    pic.raise_irq(1)
    pic.acknowledge()                       # IRQ1 in service
    bus.write(0x21, 1, 0x02)                # mask IRQ1
    bus.write(0x20, 1, 0x68)                # OCW3: set special mask mode
    pic.raise_irq(5)
    assert pic.acknowledge() == 0x35
    bus.write(0x20, 1, 0x48)                # reset special mask mode
    pic.raise_irq(6)
    assert not pic.has_interrupt()


def test_single_mode_without_icw3():
    pic = PICPair()
    bus, _ = bus_with(pic)
    bus.write(0x20, 1, 0x13)                # single, ICW4
    bus.write(0x21, 1, 0x40)
    bus.write(0x21, 1, 0x01)                # goes straight to ICW4
    bus.write(0x21, 1, 0xFE)                # OCW1
    assert pic.master.vector_base == 0x40 and pic.master.imr == 0xFE
    pic.raise_irq(0)
    assert pic.acknowledge() == 0x40
