"""The local APIC (xAPIC) of the one CPU, memory mapped at 0xFEE00000.

Modelled: ID (0), version (0x14, six LVT entries), TPR and the PPR derived
from it and the ISR, EOI, ISR/IRR/TMR, LDR/DFR, SVR (software enable), ESR
(illegal vectors, latched on write), the ICR with fixed and lowest-priority
IPIs to this CPU (shorthands self / all-including-self, or its physical ID or
the broadcast ID), the LVT timer in one-shot and periodic mode on virtual time,
and the APIC base MSR's value and its EN bit (`set_base_msr`: the guest's
rdmsr/wrmsr 0x1B reach it in every mode, docs/devices.md), and NMIs sent to
this CPU through the ICR (delivery mode NMI: `nmi_pending`, one at most; the
CPU side, NMI blocking, is runtime/nmi.py).  Not modelled: SMI, INIT and SIPI
delivery and LVT entries asking for NMI (counted as `unsupported`), the
TSC-deadline timer mode, x2APIC, the thermal,
performance and CMCI sources, level-triggered IPIs' TMR and remote IRR (every
interrupt is edge triggered here).

The timer counts at `link.cpu_hz` (one APIC bus tick per virtual instruction,
before the divider), so its events fall on exact, reproducible instructions,
as the PIT's do (runtime/devices/pit.py).

Interrupts the APIC accepts wait in IRR; `has_interrupt` / `acknowledge`
are the CPU side, in the same shape as the 8259's, and runtime/devices/intc.py
joins the two into the one path the VM injects from.
"""
from __future__ import annotations

from . import regs
from .base import Device

_LVTS = (regs.APIC_LVT_CMCI, regs.APIC_LVT_TIMER, regs.APIC_LVT_THERMAL, regs.APIC_LVT_PERF,
         regs.APIC_LVT_LINT0, regs.APIC_LVT_LINT1, regs.APIC_LVT_ERROR)
# Writable bits of each LVT entry (SDM figure 11-8): vector, delivery mode,
# polarity, trigger mode (LINT only), mask, timer mode (timer only).
_LVT_BITS = {regs.APIC_LVT_TIMER: 0x700FF, regs.APIC_LVT_LINT0: 0x1A7FF,
             regs.APIC_LVT_LINT1: 0x1A7FF, regs.APIC_LVT_ERROR: 0x100FF,
             regs.APIC_LVT_CMCI: 0x107FF, regs.APIC_LVT_THERMAL: 0x107FF,
             regs.APIC_LVT_PERF: 0x107FF}
_DIVIDE = {0b000: 2, 0b001: 4, 0b010: 8, 0b011: 16, 0b100: 32, 0b101: 64, 0b110: 128, 0b111: 1}


def _highest(bits: int) -> int:
    """The highest vector set in a 256-bit vector set, or -1."""
    return bits.bit_length() - 1


class LocalAPIC(Device):
    name = "lapic"
    mmio = ((regs.LAPIC_BASE, regs.LAPIC_SIZE),)

    def __init__(self, apic_id: int = 0):
        self.counts = {"ipis": 0, "eois": 0, "timer_fired": 0, "timer_coalesced": 0,
                       "delivered": 0, "unsupported": 0, "illegal_vectors": 0, "nmis": 0}
        # An NMI sent and not yet taken by the CPU: a latch, so a second one
        # sent meanwhile merges with it (SDM 6.7.1: at most one pending).  Kept
        # across an APIC reset: the CPU has it already.
        self.nmi_pending = False
        self.reset(apic_id)

    def reset(self, apic_id: int = 0) -> None:
        """The state after power-on (the counters are kept)."""
        self.apic_id = apic_id
        self.base_msr = regs.LAPIC_BASE | regs.APIC_BASE_BSP | regs.APIC_BASE_EN
        self.tpr = 0
        self.svr = 0xFF                 # software disabled at reset, spurious vector 0xFF
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.irr = self.isr = self.tmr = 0
        self.esr = self.esr_pending = 0
        self.icr = 0                    # ICR high dword << 32 | low dword
        self.lvt = {r: regs.APIC_LVT_MASKED for r in _LVTS}
        # LINT0 as the BIOS leaves it on the bootstrap processor (QEMU does the
        # same at reset): ExtINT, unmasked, so the 8259's interrupts reach the
        # CPU through the APIC (runtime/devices/intc.py).
        self.lvt[regs.APIC_LVT_LINT0] = regs.APIC_DM_EXTINT
        self.lvt[regs.APIC_LVT_LINT1] = regs.APIC_DM_NMI | regs.APIC_LVT_MASKED
        self.dcr = 0
        self.initial = 0
        self._start = 0                 # virtual time the count was (re)loaded
        self._fired = 0                 # timer periods already delivered since _start

    # -- state ----------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Globally (APIC base MSR) and software (SVR) enabled."""
        return bool(self.base_msr & regs.APIC_BASE_EN) and bool(self.svr & regs.APIC_SVR_ENABLE)

    @property
    def globally_enabled(self) -> bool:
        return bool(self.base_msr & regs.APIC_BASE_EN)

    def ppr(self) -> int:
        isrv = max(_highest(self.isr), 0)
        return self.tpr if (self.tpr >> 4) >= (isrv >> 4) else isrv & 0xF0

    @staticmethod
    def base_msr_allowed(value: int) -> bool:
        """wrmsr 0x1B raises #GP for reserved bits: 0-7, 9, EXTD (no x2APIC in
        the CPUID model) and those above MAXPHYADDR (32: no PAE in CPUID)."""
        return not value & (0xFF | (1 << 9) | regs.APIC_BASE_EXTD | ~0xFFFFFFFF & 0xFFFFFFFFFFFFFFFF)

    def set_base_msr(self, value: int) -> None:
        """What a wrmsr 0x1B does (runtime/emulation.py under trap and bt,
        runtime/cpucheck.py under emulate): the base stays at 0xFEE00000
        (relocation is not modelled, the value is kept); clearing EN resets
        the APIC's state as the SDM says."""
        was = self.globally_enabled
        self.base_msr = (value & ~regs.APIC_BASE_EXTD & 0xFFFFFFFFFFFFF900) | (self.base_msr & regs.APIC_BASE_BSP)
        if was and not self.globally_enabled:
            msr = self.base_msr
            self.reset(self.apic_id)
            self.base_msr = msr

    # -- interrupts in ----------------------------------------------------------------
    def accept(self, vector: int) -> None:
        """A fixed interrupt for this CPU (IPI or LVT): into IRR."""
        if vector < 16:
            self.esr_pending |= regs.APIC_ESR_RECV_ILLEGAL
            self.counts["illegal_vectors"] += 1
            return
        self.irr |= 1 << vector

    def _deliver_lvt(self, entry: int) -> None:
        if entry & regs.APIC_LVT_MASKED or not self.enabled:
            return
        if entry & regs.APIC_LVT_DELIVERY == regs.APIC_DM_FIXED:
            self.accept(entry & 0xFF)
        else:
            self.counts["unsupported"] += 1

    # -- CPU side -------------------------------------------------------------------------
    def has_interrupt(self) -> bool:
        if not self.enabled or not self.irr:
            return False
        return (_highest(self.irr) & 0xF0) > self.ppr()

    def acknowledge(self) -> int:
        vector = _highest(self.irr)
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector
        self.counts["delivered"] += 1
        return vector

    def take_nmi(self) -> None:
        """The CPU takes the pending NMI (call only when `nmi_pending`)."""
        self.nmi_pending = False

    def lint0_passes_pic(self) -> bool:
        """Whether the 8259's INTR reaches the CPU: with the APIC globally
        disabled it goes straight to the CPU; otherwise LINT0 must be unmasked
        (as QEMU's apic_accept_pic_intr decides)."""
        return not self.globally_enabled or not self.lvt[regs.APIC_LVT_LINT0] & regs.APIC_LVT_MASKED

    # -- registers --------------------------------------------------------------------
    # Each register is the first 4 bytes of a 16-byte slot; bytes 4-15 are
    # reserved: they read 0 and ignore writes.
    def mmio_read(self, addr: int, size: int) -> int:
        off = addr - regs.LAPIC_BASE
        if off & 0xC:
            return 0
        value = self._read32(off & 0xFF0)
        return (value >> (8 * (off & 3))) & ((1 << (8 * size)) - 1)

    def _read32(self, reg: int) -> int:
        if reg == regs.APIC_ID:
            return self.apic_id << 24
        if reg == regs.APIC_VERSION:
            return regs.APIC_VERSION_VALUE
        if reg == regs.APIC_TPR:
            return self.tpr
        if reg == regs.APIC_PPR:
            return self.ppr()
        if reg == regs.APIC_LDR:
            return self.ldr
        if reg == regs.APIC_DFR:
            return self.dfr
        if reg == regs.APIC_SVR:
            return self.svr
        for base, bits in ((regs.APIC_ISR, self.isr), (regs.APIC_TMR, self.tmr), (regs.APIC_IRR, self.irr)):
            if base <= reg < base + 0x80:
                return (bits >> (32 * ((reg - base) >> 4))) & 0xFFFFFFFF
        if reg == regs.APIC_ESR:
            return self.esr
        if reg == regs.APIC_ICR_LO:
            return self.icr & 0xFFFFFFFF & ~regs.APIC_ICR_BUSY
        if reg == regs.APIC_ICR_HI:
            return self.icr >> 32
        if reg in self.lvt:
            return self.lvt[reg]
        if reg == regs.APIC_TIMER_ICR:
            return self.initial
        if reg == regs.APIC_TIMER_CCR:
            return self.current_count(self.link.now())
        if reg == regs.APIC_TIMER_DCR:
            return self.dcr
        return 0                        # APR, RRD and reserved offsets

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        off = addr - regs.LAPIC_BASE
        if off & 0xC:
            return
        if off & 3 or size != 4:
            # The SDM requires aligned 32-bit accesses; a narrower store is
            # taken as the whole register with the other bytes zero.
            value = (value << (8 * (off & 3))) & 0xFFFFFFFF
        self._write32(off & 0xFF0, value & 0xFFFFFFFF)

    def _write32(self, reg: int, value: int) -> None:
        if reg == regs.APIC_ID:
            self.apic_id = value >> 24
        elif reg == regs.APIC_TPR:
            self.tpr = value & 0xFF
        elif reg == regs.APIC_EOI:
            self.eoi()
        elif reg == regs.APIC_LDR:
            self.ldr = value & 0xFF000000
        elif reg == regs.APIC_DFR:
            self.dfr = value | 0x0FFFFFFF
        elif reg == regs.APIC_SVR:
            self.svr = value & 0x1FF
            if not value & regs.APIC_SVR_ENABLE:     # software disable masks every LVT
                for r in self.lvt:
                    self.lvt[r] |= regs.APIC_LVT_MASKED
        elif reg == regs.APIC_ESR:
            self.esr, self.esr_pending = self.esr_pending, 0
        elif reg == regs.APIC_ICR_LO:
            self.icr = (self.icr & ~0xFFFFFFFF) | (value & 0xFFFFFFFF & ~regs.APIC_ICR_BUSY)
            self._send_ipi()
        elif reg == regs.APIC_ICR_HI:
            self.icr = (value & 0xFF000000) << 32 | (self.icr & 0xFFFFFFFF)
        elif reg in self.lvt:
            if reg == regs.APIC_LVT_TIMER:
                self._sync_timer(self.link.now())
            value &= _LVT_BITS[reg]
            if not self.svr & regs.APIC_SVR_ENABLE:
                value |= regs.APIC_LVT_MASKED
            self.lvt[reg] = value        # delivery status, remote IRR: always 0 here
        elif reg == regs.APIC_TIMER_ICR:
            self.initial = value
            self._start = self.link.now()
            self._fired = 0
        elif reg == regs.APIC_TIMER_DCR:
            now = self.link.now()
            count = self.current_count(now)
            self.dcr = value & 0xB
            if self.initial and count:      # the count goes on at the new rate
                self._restart_from(count, now)
        # read-only and reserved registers ignore writes

    def eoi(self) -> None:
        self.counts["eois"] += 1
        v = _highest(self.isr)
        if v >= 0:
            self.isr &= ~(1 << v)

    def _send_ipi(self) -> None:
        self.counts["ipis"] += 1
        lo = self.icr & 0xFFFFFFFF
        vector, mode = lo & 0xFF, lo & regs.APIC_LVT_DELIVERY
        short = lo & regs.APIC_ICR_SHORTHAND
        if short == regs.APIC_SH_OTHERS:
            return                      # no other CPU
        if short == regs.APIC_SH_NONE:
            dest = self.icr >> 56
            if dest not in (self.apic_id, 0xFF):
                return                  # no CPU with that ID
        if mode == regs.APIC_DM_NMI:
            # The vector field is ignored (the CPU takes vector 2); a software-
            # disabled APIC still passes NMIs (SDM 11.4.7.2).
            self.counts["nmis"] += 1
            self.nmi_pending = True
            return
        if mode not in (regs.APIC_DM_FIXED, regs.APIC_DM_LOWEST):
            self.counts["unsupported"] += 1     # SMI, INIT, SIPI: not modelled
            return
        if vector < 16:
            self.esr_pending |= regs.APIC_ESR_SEND_ILLEGAL
            self.counts["illegal_vectors"] += 1
            return
        self.accept(vector)

    # -- the timer ------------------------------------------------------------------
    def _divisor(self) -> int:
        return _DIVIDE[(self.dcr & 3) | ((self.dcr & 8) >> 1)]

    def _periodic(self) -> bool:
        return self.lvt[regs.APIC_LVT_TIMER] & regs.APIC_TIMER_MODE == regs.APIC_TIMER_PERIODIC

    def _elapsed(self, now: int) -> int:
        return max(now - self._start, 0) // self._divisor()

    def current_count(self, now: int) -> int:
        if not self.initial:
            return 0
        ticks = self._elapsed(now)
        if self._periodic():
            return self.initial - ticks % self.initial
        return max(self.initial - ticks, 0)

    def _restart_from(self, count: int, now: int) -> None:
        """Keep the count at `count` from `now` on (a divider or mode change)."""
        div = self._divisor()
        self._start = now - (self.initial - count) * div
        self._fired = (self.initial - count) // self.initial if self.initial else 0

    def _sync_timer(self, now: int) -> None:
        """Deliver what is due before the LVT changes (mode, vector, mask)."""
        self.tick(now)

    def next_event(self) -> int | None:
        if not self.initial:
            return None
        if not self._periodic() and self._fired:
            return None
        div = self._divisor()
        return self._start + (self._fired + 1) * self.initial * div

    def tick(self, now: int) -> None:
        due = self.next_event()
        if due is None or now < due:
            return
        periods = self._elapsed(now) // self.initial
        if not self._periodic():
            periods = 1
        missed = periods - self._fired
        self._fired = periods
        self.counts["timer_fired"] += 1
        self.counts["timer_coalesced"] += missed - 1   # periods inside one slice merge, as IRR does
        self._deliver_lvt(self.lvt[regs.APIC_LVT_TIMER])

    def stats(self) -> dict:
        return {k: v for k, v in self.counts.items() if v}
