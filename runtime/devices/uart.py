"""A 16550A UART (COM1 at 0x3F8, IRQ 4 by default; the base is a parameter).

What Linux's 8250 driver relies on is modelled: the scratch and IER probes,
the loopback probe (MSR mirrors MCR, THR bytes return on RBR), FIFO
detection through IIR bits 7-6, the divisor latch, and the THR-empty
interrupt protocol, which is the only way the driver sends userland output:
  - enabling ETBEI while THR is empty arms the THRE interrupt;
  - reading IIR while it reports THRE disarms it;
  - writing THR disarms it and, transmission being instant, re-arms it at
    once (so the line drops and rises again: a fresh edge for the 8259).
The interrupt reaches IRQ `irq` only while MCR OUT2 is set and loopback is
off, as on a PC, where OUT2 gates the ISA line and loopback disconnects it.

Transmission is instant (LSR always says THRE|TEMT; the baud rate is stored,
never used).  Reception: `feed(data)` queues bytes "on the wire" (unbounded,
so host input is never lost); they enter the receive FIFO (16 bytes, or 1 with
FIFOs off) as it has room, so no overrun happens from host input.  The data
interrupt fires whenever the FIFO holds data (trigger level 1, no timeout
interrupt).  `ScriptedInput` releases a file's bytes on a virtual-time
schedule for deterministic runs.
"""
from __future__ import annotations

from collections import deque

from bt.errors import BadInput

from . import regs
from .base import Device


class ScriptedInput:
    """Deterministic keystrokes: one byte every `interval` virtual instructions.

    The clock starts when the guest first enables the received-data interrupt
    (IER bit 0): before that no driver is listening, and a fixed start time
    would make the script depend on how long the guest takes to boot.  The
    first byte arrives `interval` instructions after that moment."""

    def __init__(self, data: bytes, interval: int):
        if interval <= 0:
            raise BadInput(f"serial input interval must be positive, got {interval}")
        self.data = bytes(data)
        self.interval = interval
        self.pos = 0
        self.start: int | None = None

    def begin(self, now: int) -> None:
        if self.start is None:
            self.start = now

    def next_time(self) -> int | None:
        if self.start is None or self.pos >= len(self.data):
            return None
        return self.start + (self.pos + 1) * self.interval

    def due(self, now: int) -> bytes:
        """The bytes whose arrival time is at or before `now` (consumed)."""
        t = self.next_time()
        if t is None or t > now:
            return b""
        upto = min(len(self.data), (now - self.start) // self.interval)
        out, self.pos = self.data[self.pos:upto], upto
        return out

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


class UART16550(Device):
    def __init__(self, base: int = regs.COM1_BASE, irq: int = regs.COM1_IRQ, name: str = "uart"):
        self.name = name
        self.base = base
        self.irq = irq
        self.ports = (range(base, base + 8),)
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.dll = 0x0C        # 9600 baud, what a PC BIOS leaves
        self.dlm = 0
        self.fifo_enabled = False
        self.fcr_trigger = 0
        self.rx: deque[int] = deque()
        self.backlog: deque[int] = deque()   # bytes on the wire, not yet in the FIFO
        self.overrun = False
        self.msr_delta = 0
        self.thre_pending = False
        self.irq_level = False
        self.script: ScriptedInput | None = None
        self.tx_bytes = 0
        self.rx_bytes = 0

    # --- host side ------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes arriving from the terminal (or a script)."""
        self.backlog.extend(data)
        self._refill()
        self._update_irq()
        self.publish()

    def set_scripted_input(self, data: bytes, interval: int) -> ScriptedInput:
        self.script = ScriptedInput(data, interval)
        return self.script

    def _refill(self) -> None:
        if self.mcr & regs.MCR_LOOP:
            return                                     # receiver is disconnected
        room = (regs.UART_FIFO_SIZE if self.fifo_enabled else 1) - len(self.rx)
        while room > 0 and self.backlog:
            self.rx.append(self.backlog.popleft())
            self.rx_bytes += 1
            room -= 1

    # --- interrupts -------------------------------------------------------------
    def _interrupt_id(self) -> int:
        ier = self.ier
        if ier & regs.IER_RLSI and self.overrun:
            return regs.IIR_RLSI
        if ier & regs.IER_RDI and self.rx:
            return regs.IIR_RDI
        if ier & regs.IER_THRI and self.thre_pending:
            return regs.IIR_THRI
        if ier & regs.IER_MSI and self.msr_delta:
            return regs.IIR_MSI
        return regs.IIR_NO_INT

    def _update_irq(self) -> None:
        level = (self._interrupt_id() != regs.IIR_NO_INT
                 and self.mcr & (regs.MCR_OUT2 | regs.MCR_LOOP) == regs.MCR_OUT2)
        if level != self.irq_level:
            self.irq_level = level
            if level:
                self.link.raise_irq(self.irq)
            else:
                self.link.lower_irq(self.irq)

    # --- modem lines ------------------------------------------------------------
    def _msr_lines(self) -> int:
        if not self.mcr & regs.MCR_LOOP:
            return regs.MSR_CONNECTED
        m = self.mcr
        return ((regs.MSR_CTS if m & regs.MCR_RTS else 0)
                | (regs.MSR_DSR if m & regs.MCR_DTR else 0)
                | (regs.MSR_RI if m & regs.MCR_OUT1 else 0)
                | (regs.MSR_DCD if m & regs.MCR_OUT2 else 0))

    def _set_mcr(self, value: int) -> None:
        before = self._msr_lines()
        self.mcr = value & regs.MCR_MASK
        after = self._msr_lines()
        changed = before ^ after
        if changed & regs.MSR_CTS:
            self.msr_delta |= regs.MSR_DCTS
        if changed & regs.MSR_DSR:
            self.msr_delta |= regs.MSR_DDSR
        if changed & regs.MSR_DCD:
            self.msr_delta |= regs.MSR_DDCD
        if before & regs.MSR_RI and not after & regs.MSR_RI:
            self.msr_delta |= regs.MSR_TERI      # trailing edge of ring indicator
        self._refill()

    # --- native answers (runtime/iofast.py) -------------------------------------
    def publish(self) -> None:
        """LSR is answered natively while reading it changes nothing (no overrun
        to clear); THR writes are queued while sending a byte raises no
        interrupt (ETBEI off: the THRE edge of `_transmit` is invisible), the
        divisor latch is closed and loopback is off.  Every state change is in
        Python (read, write, feed, tick), and each ends here."""
        fast = self.fast
        if fast is None:
            return
        lsr = None
        if not self.overrun:
            lsr = regs.LSR_THRE | regs.LSR_TEMT | (regs.LSR_DR if self.rx else 0)
        fast.publish_read(self.base + regs.UART_LSR, lsr)
        fast.publish_sink(self.base + regs.UART_THR,
                          not self.lcr & regs.LCR_DLAB and not self.mcr & regs.MCR_LOOP
                          and not self.ier & regs.IER_THRI)

    # --- ports ----------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        value = self._read(port)
        self.publish()
        return value

    def write(self, port: int, size: int, value: int) -> None:
        self._write(port, value)
        self.publish()

    def _read(self, port: int) -> int:
        off = port - self.base
        dlab = self.lcr & regs.LCR_DLAB
        if off == regs.UART_RBR:
            if dlab:
                return self.dll
            value = self.rx.popleft() if self.rx else 0
            self._refill()
            self._update_irq()
            return value
        if off == regs.UART_IER:
            return self.dlm if dlab else self.ier
        if off == regs.UART_IIR:
            iid = self._interrupt_id()
            if iid == regs.IIR_THRI:
                self.thre_pending = False        # reading IIR acknowledges THRE
                self._update_irq()
            return iid | (regs.IIR_FIFO_ENABLED if self.fifo_enabled else 0)
        if off == regs.UART_LCR:
            return self.lcr
        if off == regs.UART_MCR:
            return self.mcr
        if off == regs.UART_LSR:
            value = regs.LSR_THRE | regs.LSR_TEMT
            if self.rx:
                value |= regs.LSR_DR
            if self.overrun:
                value |= regs.LSR_OE
                self.overrun = False
                self._update_irq()
            return value
        if off == regs.UART_MSR:
            value = self._msr_lines() | self.msr_delta
            if self.msr_delta:
                self.msr_delta = 0
                self._update_irq()
            return value
        return self.scr

    def _write(self, port: int, value: int) -> None:
        off = port - self.base
        dlab = self.lcr & regs.LCR_DLAB
        if off == regs.UART_THR:
            if dlab:
                self.dll = value
            else:
                self._transmit(value)
        elif off == regs.UART_IER:
            if dlab:
                self.dlm = value
            else:
                self._set_ier(value)
        elif off == regs.UART_FCR:
            self._set_fcr(value)
        elif off == regs.UART_LCR:
            self.lcr = value
        elif off == regs.UART_MCR:
            self._set_mcr(value)
            self._update_irq()
        elif off == regs.UART_SCR:
            self.scr = value
        # LSR and MSR writes are ignored (factory test registers).

    def _transmit(self, value: int) -> None:
        self.thre_pending = False
        self._update_irq()
        if self.mcr & regs.MCR_LOOP:
            if len(self.rx) < (regs.UART_FIFO_SIZE if self.fifo_enabled else 1):
                self.rx.append(value)
            else:
                self.overrun = True
        else:
            self.link.serial_out(bytes((value,)))
            self.tx_bytes += 1
        self.thre_pending = True                 # THR is empty again at once
        self._update_irq()

    def _set_ier(self, value: int) -> None:
        old, self.ier = self.ier, value & regs.IER_MASK
        if (old ^ self.ier) & regs.IER_THRI:
            # Enabling ETBEI with THR empty (always, here) arms the THRE interrupt.
            self.thre_pending = bool(self.ier & regs.IER_THRI)
        if self.ier & regs.IER_RDI and self.script is not None:
            self.script.begin(self.link.now())
        self._update_irq()

    def _set_fcr(self, value: int) -> None:
        enable = bool(value & regs.FCR_ENABLE_FIFO)
        if enable != self.fifo_enabled:
            self.rx.clear()                      # switching FIFO mode empties both FIFOs
        self.fifo_enabled = enable
        if value & regs.FCR_CLEAR_RCVR:
            self.rx.clear()
        self.fcr_trigger = value & 0xC0
        self._refill()
        self._update_irq()

    # --- virtual time -----------------------------------------------------------
    def next_event(self) -> int | None:
        return self.script.next_time() if self.script is not None else None

    def tick(self, now: int) -> None:
        if self.script is not None:
            data = self.script.due(now)
            if data:
                self.feed(data)

    def stats(self) -> dict:
        out = {"tx_bytes": self.tx_bytes, "rx_bytes": self.rx_bytes}
        if self.script is not None:
            out["scripted_input_left"] = len(self.script.data) - self.script.pos
        return out
