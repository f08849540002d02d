"""The local APIC (runtime/devices/lapic.py) and the interrupt router
(runtime/devices/intc.py) against a fake machine link."""
import pytest

from runtime.devices import regs
from runtime.devices.intc import InterruptRouter
from runtime.devices.lapic import LocalAPIC
from runtime.devices.pic import PICPair

from devlink import FakeLink

B = regs.LAPIC_BASE


def apic(hz=100_000_000):
    link = FakeLink(cpu_hz=hz)
    a = LocalAPIC()
    a.attach(link)
    return a, link


def wr(a, reg, value):
    a.mmio_write(B + reg, 4, value)


def rd(a, reg):
    return a.mmio_read(B + reg, 4)


def enabled():
    a, link = apic()
    wr(a, regs.APIC_SVR, 0x1FF)
    return a, link


def test_reset_state_as_a_bios_leaves_the_bsp():
    a, _ = apic()
    assert rd(a, regs.APIC_ID) == 0 and rd(a, regs.APIC_VERSION) == 0x50014
    assert rd(a, regs.APIC_SVR) == 0xFF and rd(a, regs.APIC_DFR) == 0xFFFFFFFF
    assert rd(a, regs.APIC_LVT_LINT0) == 0x700          # ExtINT, unmasked: the 8259 passes
    assert rd(a, regs.APIC_LVT_TIMER) == regs.APIC_LVT_MASKED
    assert a.base_msr == 0xFEE00900


def test_a_self_ipi_goes_to_irr_then_isr_and_eoi_clears_it():
    a, _ = enabled()
    wr(a, regs.APIC_ICR_LO, regs.APIC_SH_SELF | 0x45)
    assert rd(a, regs.APIC_IRR + 0x20) == 1 << 5 and a.has_interrupt()
    assert a.acknowledge() == 0x45
    assert rd(a, regs.APIC_IRR + 0x20) == 0 and rd(a, regs.APIC_ISR + 0x20) == 1 << 5
    assert rd(a, regs.APIC_PPR) == 0x40
    wr(a, regs.APIC_EOI, 0)
    assert rd(a, regs.APIC_ISR + 0x20) == 0 and rd(a, regs.APIC_PPR) == 0


@pytest.mark.parametrize("icr, delivered", [
    (regs.APIC_SH_SELF | 0x50, True),
    (regs.APIC_SH_ALL | 0x50, True),
    (regs.APIC_SH_OTHERS | 0x50, False),      # there is no other CPU
    (regs.APIC_SH_NONE | 0x50, True),         # destination 0: this CPU
    (regs.APIC_SH_SELF | regs.APIC_DM_NMI | 0x50, False),   # NMI: not through IRR (below)
])
def test_ipi_destinations_and_modes(icr, delivered):
    a, _ = enabled()
    wr(a, regs.APIC_ICR_LO, icr)
    assert a.has_interrupt() is delivered
    assert rd(a, regs.APIC_ICR_LO) & regs.APIC_ICR_BUSY == 0


def test_an_nmi_ipi_latches_one_pending_nmi_whatever_its_vector():
    a, _ = enabled()
    wr(a, regs.APIC_ICR_LO, regs.APIC_SH_SELF | regs.APIC_DM_NMI | 0x05)    # vector ignored: no ESR
    wr(a, regs.APIC_ICR_LO, regs.APIC_DM_NMI)                              # destination 0: this CPU
    assert a.nmi_pending and not a.has_interrupt() and a.irr == 0
    assert a.counts["nmis"] == 2 and a.counts["unsupported"] == a.counts["illegal_vectors"] == 0
    a.take_nmi()                                                           # the two merged into one
    assert not a.nmi_pending
    wr(a, regs.APIC_ICR_HI, 3 << 24)
    wr(a, regs.APIC_ICR_LO, regs.APIC_DM_NMI)                              # no CPU 3
    assert not a.nmi_pending


def test_an_ipi_to_another_apic_id_goes_nowhere():
    a, _ = enabled()
    wr(a, regs.APIC_ICR_HI, 3 << 24)
    wr(a, regs.APIC_ICR_LO, 0x50)
    assert not a.has_interrupt()


def test_an_illegal_vector_sets_esr_after_the_next_esr_write():
    a, _ = enabled()
    wr(a, regs.APIC_ICR_LO, regs.APIC_SH_SELF | 0x05)
    assert not a.has_interrupt() and rd(a, regs.APIC_ESR) == 0
    wr(a, regs.APIC_ESR, 0)
    assert rd(a, regs.APIC_ESR) == regs.APIC_ESR_SEND_ILLEGAL


def test_tpr_and_the_in_service_class_hold_back_lower_or_equal_classes():
    a, _ = enabled()
    wr(a, regs.APIC_TPR, 0x50)
    wr(a, regs.APIC_ICR_LO, regs.APIC_SH_SELF | 0x55)
    assert not a.has_interrupt()
    wr(a, regs.APIC_ICR_LO, regs.APIC_SH_SELF | 0x61)
    assert a.has_interrupt() and a.acknowledge() == 0x61
    wr(a, regs.APIC_TPR, 0)
    assert not a.has_interrupt()          # 0x55's class 5 is below 0x61's in service (6)
    wr(a, regs.APIC_EOI, 0)
    assert a.has_interrupt() and a.acknowledge() == 0x55


def test_a_software_disabled_apic_delivers_nothing_and_masks_its_lvts():
    a, _ = enabled()
    wr(a, regs.APIC_LVT_TIMER, 0x40)
    wr(a, regs.APIC_SVR, 0xFF)
    assert rd(a, regs.APIC_LVT_TIMER) & regs.APIC_LVT_MASKED
    wr(a, regs.APIC_ICR_LO, regs.APIC_SH_SELF | 0x50)
    assert not a.has_interrupt()


@pytest.mark.parametrize("dcr, div", [(0xB, 1), (0x0, 2), (0x3, 16), (0xA, 128)])
def test_one_shot_timer_counts_down_at_the_divided_rate_and_fires_once(dcr, div):
    a, link = enabled()
    wr(a, regs.APIC_TIMER_DCR, dcr)
    wr(a, regs.APIC_LVT_TIMER, 0x40)
    link.t = 1000
    wr(a, regs.APIC_TIMER_ICR, 100)
    assert a.next_event() == 1000 + 100 * div
    link.t = 1000 + 40 * div
    assert rd(a, regs.APIC_TIMER_CCR) == 60
    a.tick(1000 + 100 * div - 1)
    assert not a.has_interrupt()
    a.tick(1000 + 100 * div)
    assert a.has_interrupt() and a.next_event() is None
    link.t = 10 ** 6
    assert rd(a, regs.APIC_TIMER_CCR) == 0


def test_periodic_timer_reloads_and_merges_periods_inside_one_slice():
    a, link = enabled()
    wr(a, regs.APIC_TIMER_DCR, 0xB)
    wr(a, regs.APIC_LVT_TIMER, regs.APIC_TIMER_PERIODIC | 0x40)
    wr(a, regs.APIC_TIMER_ICR, 1000)
    a.tick(1000)
    assert a.acknowledge() == 0x40 and a.next_event() == 2000
    wr(a, regs.APIC_EOI, 0)
    link.t = 2500
    assert rd(a, regs.APIC_TIMER_CCR) == 500
    a.tick(4200)                          # periods 2, 3, 4 in one slice: one request
    assert a.acknowledge() == 0x40 and not a.has_interrupt()
    assert a.next_event() == 5000 and a.stats()["timer_coalesced"] == 2


def test_a_masked_timer_runs_but_raises_nothing_and_a_zero_count_stops_it():
    a, link = enabled()
    wr(a, regs.APIC_LVT_TIMER, regs.APIC_LVT_MASKED | 0x40)
    wr(a, regs.APIC_TIMER_ICR, 10)
    a.tick(10 * 2)
    assert not a.has_interrupt()
    wr(a, regs.APIC_TIMER_ICR, 0)
    assert a.next_event() is None


def test_clearing_the_msr_enable_resets_the_apic_and_lets_the_pic_through():
    a, _ = enabled()
    wr(a, regs.APIC_LVT_LINT0, regs.APIC_LVT_MASKED | regs.APIC_DM_EXTINT)
    assert not a.lint0_passes_pic()
    a.set_base_msr(0xFEE00000)
    assert not a.globally_enabled and a.lint0_passes_pic()
    assert rd(a, regs.APIC_SVR) == 0xFF
    a.set_base_msr(0xFEE00800)
    assert a.globally_enabled and a.base_msr == 0xFEE00900


def test_the_router_takes_the_apic_first_and_the_pic_only_through_lint0():
    link = FakeLink()
    pic, a = PICPair(), LocalAPIC()
    pic.attach(link)
    a.attach(link)
    r = InterruptRouter(pic, a)
    for port, v in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE)):
        pic.write(port, 1, v)
    r.raise_irq(0)
    wr(a, regs.APIC_SVR, 0x1FF)
    wr(a, regs.APIC_ICR_LO, regs.APIC_SH_SELF | 0x30)
    assert r.has_interrupt() and r.acknowledge() == 0x30
    assert r.has_interrupt() and r.acknowledge() == 0x20       # then the 8259's IRQ 0
    r.raise_irq(0)
    pic.write(0x20, 1, 0x20)
    wr(a, regs.APIC_LVT_LINT0, regs.APIC_LVT_MASKED | regs.APIC_DM_EXTINT)
    assert not r.has_interrupt()


def test_byte_reads_see_the_register_bytes():
    a, _ = apic()
    assert a.mmio_read(B + regs.APIC_VERSION, 1) == 0x14
    assert a.mmio_read(B + regs.APIC_VERSION + 2, 1) == 0x05


def test_the_reserved_bytes_of_a_register_slot_read_0_and_ignore_writes():
    a, _ = enabled()
    a.mmio_write(B + regs.APIC_ICR_LO + 4, 4, regs.APIC_SH_SELF | 0x50)
    assert not a.has_interrupt() and a.stats().get("ipis", 0) == 0
    assert a.mmio_read(B + regs.APIC_VERSION + 4, 4) == 0
