"""The virtual machine: one Unicorn engine, the pc32 devices, and the run loop.

Modes are configurations of this one engine (docs/architecture.md):
    emulate  guest kernel at real CPL 0, privileged instructions run by Unicorn
    trap     guest kernel at real CPL 1, faults emulated or reflected (runtime.trap)
    bt       trap + scanner + patcher (runtime.bt)
Devices, clock, loader and delivery are literally the same code in every mode, which
is what keeps fidelity comparisons honest.

Time: virtual time is counted in guest instructions (`vtime`); the virtual clock
runs at `cpu_mhz` million instructions per second.  The run proceeds in *slices*
of n instructions, where n ends at the next device event; the instruction clock
(runtime/clock.py, a native block hook) ends each slice on exactly its n-th
instruction, so timer interrupts land at exact, reproducible instruction counts.
Hardware interrupts are injected between slices (Unicorn has no IRQ line); a
slice ends where a waiting interrupt becomes deliverable (the clock's interrupt
window, runtime/_clock.c, in every mode: the guest's IF is the real IF in trap
and bt too), so every mode takes it at the same guest instruction, as the CPU does.
"""
from __future__ import annotations

import ctypes
import mmap
import sys
import time
from dataclasses import dataclass, field

from unicorn import (Uc, UC_ARCH_X86, UC_MODE_32, UC_HOOK_INTR, UC_HOOK_INSN,
                     UC_HOOK_INSN_INVALID, UC_HOOK_MEM_UNMAPPED, UC_PROT_ALL)
from unicorn import x86_const as X

from bt import interrupt
from bt.errors import BadInput, VMMError
from bt.images.image import GuestImage
from bt.machine import (BOOT_CR0, BOOT_EFLAGS, BOOT_GDT_ADDR, MachineConfig, flat_gdt_bytes)
from bt.mode import Mode
from bt.outcome import Outcome, RunStop
from bt.x86 import (BP, CR4_PCE, DB, DESC_SIZE, ERROR_CODE_VECTORS, GP, IF_BIT, OF, RF_BIT, SEL_INDEX_MASK,
                    SEL_TI, UD)
from runtime import cpuid as cpuid_model
from runtime.clock import STOP_NONE, InstructionClock
from runtime.counters import Counters
from runtime.delivery import Delivery, Descriptor, GuestFault, TripleFault
from runtime.v86 import in_v86
from runtime.nmi import NMIGate
from runtime.taskswitch import TaskSwitch
from runtime.isolation import unmapped_access
from runtime.devices import InterruptRouter, attach_standard_devices
from runtime.devices.bus import IOBus
from runtime.devices.regs import PIT_CH0
from runtime.iofast import NativeIO
from runtime.mmio import MMIOMap
from runtime.memory import GuestMemory, OutsideRam
from runtime.quirks import Quirks

# Translated-code cache.  Debian's kernel boot (benchmarks/linux_boot.py) peaks
# at the same RSS, 313 MB, with 128 MiB, 256 MiB and Unicorn's default 1 GiB, so
# 128 MiB holds its translations; every other guest is bounded by it.
TCG_BUFFER_BYTES = 128 << 20
MAX_SLICE = 50_000_000      # instructions per emu_start when no event is due sooner
POLL_SLICE = 2_000          # slice length while an interrupt waits (not where it lands)
MAX_IDLE_SKIPS = 100_000    # consecutive hlt wake-ups with nothing delivered = hang

SOFT_ONLY_VECTORS = (BP, OF)  # int3 and into are traps: EIP is already past them


@dataclass
class RunResult:
    exit_status: int
    reason: Outcome         # a StrEnum: reports and printed lines show its value
    retired: int
    vtime: int
    wall: float
    serial: bytes
    counters: dict
    message: str = ""
    regs: dict = field(default_factory=dict)
    vmm_time: float = 0.0
    extra: dict = field(default_factory=dict)


from runtime.modes import StopSlice as _Stop


class VM:
    """One guest run.  `VM(image, config).run()` -> RunResult."""

    def __init__(self, image: GuestImage, config: MachineConfig | None = None, *,
                 stdout=None):
        self._native_exits = None       # runtime/exits.py, once the hooks are installed
        self._in_slice = False
        self._slice_end = 0
        self.image = image
        self.config = config or MachineConfig()
        self.config.mode = Mode.parse(self.config.mode)     # in case it was set after __init__
        self.out = stdout if stdout is not None else sys.stdout.buffer
        self.counters = Counters()
        self.serial = bytearray()
        self.vtime = 0
        self.retired = 0
        self.halted = False
        self.stop = None                # RunStop once the run's end is decided (property below)
        self._slice_base = 0
        self._vmm_stopped = False       # a hook asked the slice to end
        self._abort_pending = False     # ... and the instruction at EIP did not complete
        self._ended_at: tuple[int, int | None] | None = None
        self._hook_error: BaseException | None = None
        self.guard = None               # the hypervisor area's guard (trap, bt): runtime/isolation.py
        self.debugger = None            # bt-run --gdb: called between slices (bt/gdb/server.py)
        self._idle_skips = 0
        self._vmm_time = 0.0

        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_32)
        # Unicorn reserves 1 GiB for translated code by default and fills it
        # before it flushes: a guest that keeps reaching new code (a slide
        # through zeroed RAM) grew to 890 MB.  The size must be set before the
        # engine's first use (tests/runtime/test_unicorn_facts.py).
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER_BYTES)
        # Every protection change is counted for the report (`protection_changes`):
        # mem_protect rebuilds Unicorn's memory map (milliseconds a call), and
        # CSAM must not need more of them as the guest's code grows (issue 15;
        # today trap and bt make none at all).
        self.protection_changes = 0
        real_protect = uc.mem_protect

        def counted_protect(*args, **kw):
            self.protection_changes += 1
            return real_protect(*args, **kw)
        uc.mem_protect = counted_protect
        ram = self.config.mem_bytes
        if ram <= 0 or ram > 0xC0000000:
            raise BadInput(f"--mem {self.config.mem_mib} MiB is outside 1..3072")
        # RAM is host memory we own (an anonymous mmap, zero pages on demand)
        # mapped with mem_map_ptr: protecting one page then splits the region
        # without copying all of RAM (mem_map: ~0.2 s per split at 64 MiB;
        # benchmarks/runtime_bench.py), which lazy scanning does per code page.
        self._ram = mmap.mmap(-1, ram)
        self._ram_ptr = ctypes.addressof(ctypes.c_char.from_buffer(self._ram))
        uc.mem_map_ptr(0, ram, UC_PROT_ALL, self._ram_ptr)
        self.mem = GuestMemory(uc, ram)
        self.fast = self.mem.fast
        self.quirks = Quirks(uc)
        self.clock = InstructionClock(uc)
        self.clock.set_cpu_state(self.quirks.env, *self.quirks.off.cr, self.quirks.off.efer)
        if self.quirks.env is not None:
            self.clock.decode_code16(self.quirks.off.hflags)
        self.clock.revive_memory_hooks(self.quirks.recur_mem_address())
        # The VMM's page walk reads the tables from the host memory behind RAM
        # and the control registers from the live CPU state (runtime/_walk.c).
        self.mem.use_native(self._ram, self._ram_ptr, self.quirks)
        self.delivery = Delivery(self)
        self.tasks = TaskSwitch(self)   # hardware task switches (runtime/taskswitch.py)
        self.bus = IOBus()
        self.devices = attach_standard_devices(self.bus, self, self.config)
        # The CPU's interrupt input: the local APIC, then the 8259 through LINT0
        # (runtime/devices/intc.py); `pic` keeps its old name for the modes.
        self.pic = InterruptRouter(self.devices["pic"], self.devices["lapic"])
        self.nmi = NMIGate(self)        # NMI blocking (runtime/nmi.py)
        self._single_step = False       # runtime/mmio.py: the next slice is one instruction
        self._slice_n = 0
        # Unicorn's `until` probe corrupts fault state once paging is on (a note
        # outside the repository, /work/shared/notes/unicorn-x86-facts.md): enable
        # exits with an empty list and bound slices by count.
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        self._install_hooks()
        self.mmio = MMIOMap(self, self.bus.devices)
        # rdtsc/rdtscp answer from virtual time (runtime/tsc.py), never the host clock.
        from runtime.tsc import VirtualTSC
        self.tsc = VirtualTSC(self, on_error=self._record_hook_error)
        self.mode = self._make_mode()
        self.clock.code_base = self._real_code_base     # real mode: CS * 16 (runtime/clock.py)
        # Stores to RAM without translated code skip Unicorn's code check, as in
        # QEMU (runtime/faststores.h), in every mode.  Under emulate that puts
        # them on the inline path.  Under trap and bt their memory hooks send
        # every store through store_helper anyway, which calls the write and
        # write-protection hooks *before* it looks at TLB_NOTDIRTY, so every
        # hook still sees every store; what goes is notdirty_write and QEMU's
        # SMC check of each store (tests/runtime/test_store_facts.py,
        # "...hooks fire on an unmarked entry"; docs/benchmarks.md, "bt through
        # the decompressor").  Only an optimization: without it (Unicorn's TLB
        # not found) the run goes on, and `fast_stores_problem` says why.
        self.fast_stores_problem = self.clock.enable_fast_stores(
            ram, self.quirks.env is not None and self.quirks.off.hflags)
        # Blocks known unchanged skip the clock's byte comparison in every mode
        # (it needs only code pages that keep TLB_NOTDIRTY: runtime/clock.py).
        self.clock.watch_generation()
        # A waiting interrupt is taken at the first block where IF is set
        # (runtime/_clock.c, "Interrupt window"); needs the live CPU state.
        self._watch_window = self.mode.watches_irq_window and self.quirks.env is not None
        if self._watch_window:
            self.clock.watch_irq_window(self.quirks.off.eflags, self.quirks.off.hflags)
        # in/out run natively (trap and bt too: the guest kernel's IOPL lets ring 1
        # do I/O): a device change they make (an interrupt now deliverable, a
        # timer programmed) ends the slice right after them, not at the block's end
        self.clock.stop_after_io()
        # smsw r32 writes CR0 whole, as the CPU does (runtime/smswfix.py)
        from runtime.smswfix import SmswFix
        self.smsw = SmswFix(self)
        self.clock.fix_smsw(self.smsw.install)
        self.refresh_clock_memory()
        self._load(image)

    @property
    def stop(self) -> RunStop | None:
        """How the run ends, once decided (None while it goes on)."""
        return self._stop

    @stop.setter
    def stop(self, value: RunStop | None) -> None:
        self._stop = value
        if self._native_exits is not None:
            self._native_exits.arm(value is None)

    # -- MachineLink (what devices may ask) ------------------------------------
    @property
    def cpu_hz(self) -> int:
        return self.config.cpu_hz

    def now(self) -> int:
        if self._in_slice:
            started = self.clock.started(self.quirks.eip())
            return self._slice_base + max(started - 1, 0)
        return self.vtime

    def refresh_clock_memory(self) -> None:
        """Tell the clock which host buffers hold guest-executable bytes (RAM and
        the mode's hypervisor area), after every (re)mapping."""
        self.clock.set_memory([(0, self.config.mem_bytes, self._ram_ptr)]
                              + self.mmio.host_regions() + self.mode.host_regions())

    def single_stepping(self) -> bool:
        """The running slice is one instruction (runtime/mmio.py)."""
        return self._slice_n == 1

    def wants_single_step(self) -> None:
        """Run the next slice as one instruction: a store to a device abandoned
        by this slice runs again alone (runtime/mmio.py)."""
        self._single_step = True

    def raise_irq(self, line: int) -> None:
        self.pic.raise_irq(line)

    def lower_irq(self, line: int) -> None:
        self.pic.lower_irq(line)

    def request_stop(self, outcome: Outcome, status: int | None = None) -> None:
        """A device ends the run (debug exit, reset, console quit); `status` is
        the guest's own (debug exit), else the outcome's.  Inside a slice
        the run ends *after the current instruction*: Unicorn still finishes the
        block (runtime/clock.py), so the count and EIP are taken here."""
        if self.stop is None:
            self.stop = outcome.stop(status=status)
            self.io.stop()          # what is left of the block reaches no device
            if self._in_slice:
                eip = self.quirks.eip()
                self._ended_at = (self.clock.started(eip), self.clock.next(eip))

    def serial_out(self, data: bytes) -> None:
        self.serial += data
        if self.out is not None:
            self.out.write(data)
            if b"\n" in data:
                self.out.flush()

    # -- guest view (overridden by the deprivileged modes) -----------------------
    def guest_cpl(self) -> int:
        return self.mode.guest_cpl()

    def ring_of(self, guest_ring: int) -> int:
        return self.mode.ring_of(guest_ring)

    def real_mode(self) -> bool:
        return self.mode.real_mode()

    def _real_code_base(self) -> int:
        """The CS base where the clock must add it: real mode and V86
        (selector * 16; runtime/v86.py)."""
        return self.uc.reg_read(X.UC_X86_REG_CS) << 4 if self._paragraphs() else 0

    def _paragraphs(self) -> bool:
        """Segments are paragraph numbers: real mode or virtual-8086 mode."""
        return self.mode.real_mode() or in_v86(self.uc)

    def guest_selector(self, real_sel: int) -> int:
        return self.mode.guest_selector(real_sel)

    def real_selector(self, guest_sel: int, guest_ring: int) -> int:
        return self.mode.real_selector(guest_sel, guest_ring)

    def guest_eflags(self) -> int:
        return self.mode.guest_eflags()

    def set_guest_eflags(self, value: int) -> None:
        self.mode.set_guest_eflags(value)

    def guest_gdtr(self) -> tuple[int, int]:
        return self.mode.guest_gdtr()

    def guest_idtr(self) -> tuple[int, int]:
        return self.mode.guest_idtr()

    def guest_tr_base(self) -> int | None:
        return self.mode.guest_tr_base()

    def stack_base(self) -> int:
        if self._paragraphs():      # selector * 16 (runtime/realmode.py, runtime/v86.py)
            return self.uc.reg_read(X.UC_X86_REG_SS) << 4
        sel = self.guest_selector(self.uc.reg_read(X.UC_X86_REG_SS))
        try:
            return self.delivery.descriptor(sel).base
        except GuestFault:
            return 0

    def code_base(self) -> int:
        """The guest's CS base, read as the VMM's own look (no accessed bits
        set: the CPU read nothing); 0 when the descriptor cannot be read."""
        if self._paragraphs():
            return self.uc.reg_read(X.UC_X86_REG_CS) << 4
        sel = self.guest_selector(self.uc.reg_read(X.UC_X86_REG_CS))
        base, limit = self.guest_gdtr()
        index = sel & SEL_INDEX_MASK
        raw = self.mem.try_read(base + index, DESC_SIZE) if index + DESC_SIZE - 1 <= limit else None
        return Descriptor.parse(raw).base if raw and index and not sel & SEL_TI else 0

    # -- setup -----------------------------------------------------------------
    def _make_mode(self):
        if self.config.mode is Mode.EMULATE:
            from runtime.modes import EmulateMode
            return EmulateMode(self)
        if self.config.mode is Mode.TRAP:
            from runtime.trap import TrapMode
            return TrapMode(self)
        from runtime.bt import BTMode
        return BTMode(self)

    def _load(self, image: GuestImage) -> None:
        uc = self.uc
        ram = self.config.mem_bytes
        for seg in image.segments:
            if seg.addr < 0 or seg.end > ram:
                raise BadInput(f"{image.path}: segment {seg.addr:#x}-{seg.end:#x} lies outside "
                               f"guest RAM (0-{ram:#x}); raise --mem")
            uc.mem_write(seg.addr, seg.data)
            if seg.memsize > len(seg.data):
                uc.mem_write(seg.addr + len(seg.data), bytes(seg.memsize - len(seg.data)))
        if not 0 <= image.entry < ram:
            raise BadInput(f"{image.path}: entry point {image.entry:#x} lies outside guest RAM")
        if self.config.firmware == "bios":
            from runtime.firmware import apply_bios_state
            apply_bios_state(self, image)
        gdt = flat_gdt_bytes(image.boot_cs, image.boot_ds)
        uc.mem_write(BOOT_GDT_ADDR, gdt)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, BOOT_GDT_ADDR, len(gdt) - 1, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))
        uc.reg_write(X.UC_X86_REG_CR0, BOOT_CR0)
        uc.reg_write(X.UC_X86_REG_CS, image.boot_cs)
        for r in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES,
                  X.UC_X86_REG_FS, X.UC_X86_REG_GS):
            uc.reg_write(r, image.boot_ds)
        regs = {"eax": 0, "ebx": 0, "ecx": 0, "edx": 0, "esi": 0, "edi": 0, "ebp": 0, "esp": 0}
        regs.update(image.regs)
        for name, val in regs.items():
            uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), val & 0xFFFFFFFF)
        uc.reg_write(X.UC_X86_REG_EFLAGS, BOOT_EFLAGS)
        uc.reg_write(X.UC_X86_REG_EIP, image.entry)
        self.mode.boot()

    # -- hooks: one per event type; exceptions never escape a callback ------------
    def _install_hooks(self):
        uc = self.uc
        if self.quirks.env is not None:
            # Native, with the Python handler behind it (runtime/exits.py).
            from runtime.exits import NativeExits
            self._native_exits = NativeExits(self, self.guarded(self._on_interrupt))
        else:
            uc.hook_add(UC_HOOK_INTR, self.guarded(self._on_interrupt))
        # in/out: native hooks answer what devices publish (runtime/iofast.py),
        # the rest comes here
        slow_in, slow_out = self.guarded(self._on_in), self.guarded(self._on_out)
        self.io = NativeIO(uc, self.bus, lambda port, size: slow_in(uc, port, size, None),
                           lambda port, size, value: slow_out(uc, port, size, value, None))
        if self.quirks.env is not None:
            # The PIT's counter reads from the running instruction's virtual time
            # (runtime/iofast.py; the clock's TSC hooks configure it: runtime/tsc.py).
            self.io.use_clock_time(self.clock, PIT_CH0, self.cpu_hz)
        for dev in self.bus.devices:
            dev.set_fast(self.io)
        self.bus.publish_floating(self.io)
        if self.quirks.env is not None:
            # Hooks inside an instruction at one of the clock's sync sites put the
            # lazy flags back first (runtime/_clock.c, "Lazy flags at a sync-hook site").
            self.clock.watch_site_flags(self.quirks.off.cc_op, self.quirks.off.eip)
            self.io.repair_site_flags(self.clock)
        uc.hook_add(UC_HOOK_INSN, self.guarded(self._on_cpuid, True), None, 1, 0, X.UC_X86_INS_CPUID)
        uc.hook_add(UC_HOOK_INSN_INVALID, self.guarded(self._on_invalid, True))
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self.guarded(self._on_unmapped, False))

    def guarded(self, fn, default=None):
        def hook(uc, *args):
            t0 = time.perf_counter()
            g = self.guard
            if g is not None:           # the VMM acts: its own accesses to the area pass
                opened, g.open = g.open, 1
            try:
                return fn(*args[:-1])
            except _Stop:
                self.halt_slice()
                return default
            except OutsideRam as e:     # the CPU's own load would have been unmapped
                self.stop = self.stop or unmapped_access(e.address)
                self.halt_slice()
                return default
            except BaseException as e:  # recorded, re-raised after emu_start
                self._hook_error = e
                self.halt_slice()
                return default
            finally:
                if g is not None:
                    g.open = opened
                self.quirks.resync_pc()
                self._vmm_time += time.perf_counter() - t0
        return hook

    def _record_hook_error(self, e: BaseException) -> None:
        """A callback outside `guarded` (runtime/tsc.py) failed: re-raised after the slice."""
        if self._hook_error is None:
            self._hook_error = e
        self.halt_slice()

    def halt_slice(self, abort: bool = False) -> None:
        """End the slice from inside a hook.  `abort`: Unicorn abandons the
        instruction at EIP (a memory hook stopped it) and runs it again later."""
        self._vmm_stopped = True
        if abort:
            self._abort_pending = True
        self.uc.emu_stop()

    def exit_site(self, eip: int) -> None:
        self.counters.add("exits")
        self.counters.add("exit_sites", self.mode.guest_address(eip))

    # Once `stop` is set the run is over, but Unicorn finishes the running block
    # (runtime/clock.py): what is left of it reaches neither devices nor the VMM.
    def _on_in(self, port, size):
        if self.stop is not None:
            return 0
        self.io.drain()             # writes queued natively reach the device first
        self.counters.add("io_exits")
        self.exit_site(self.quirks.eip())
        value = self.bus.read(port, size)
        self._after_device_access()
        return value

    def _on_out(self, port, size, value):
        if self.stop is not None:
            return
        self.io.drain()
        self.counters.add("io_exits")
        self.exit_site(self.quirks.eip())
        self.bus.write(port, size, value)
        self._after_device_access()

    def _after_device_access(self):
        """End the slice after this I/O instruction when the device changed what the
        run loop must act on: a stop request, an interrupt deliverable now, or a
        device event due before the slice would end (e.g. the PIT was just
        programmed).  The instruction itself completes (an `in` keeps its value)."""
        self.mode.on_irq_state()
        if self._watch_window and self.pic.has_interrupt():
            self.clock.set_irq_wait(True)       # IF is 0: stop where it rises
        # The engine stops before the next instruction (clock.stop_after_io),
        # which never started: the count is cut there, as for an aborted store.
        if self.stop is not None or (self.pic.has_interrupt() and self.guest_eflags() & IF_BIT):
            self.halt_slice(abort=self.stop is None)
            return
        ev = self.bus.next_event()
        if ev is not None and ev < self._slice_end:
            self.halt_slice(abort=True)

    def _on_cpuid(self):
        uc = self.uc
        self.clock.repair_site_flags()       # before anything reads EFLAGS (runtime/_clock.c)
        self.counters.add("cpuid_exits")
        self.exit_site(uc.reg_read(X.UC_X86_REG_EIP))
        a, b, c, d = cpuid_model.cpuid(uc.reg_read(X.UC_X86_REG_EAX), uc.reg_read(X.UC_X86_REG_ECX))
        uc.reg_write(X.UC_X86_REG_EAX, a)
        uc.reg_write(X.UC_X86_REG_EBX, b)
        uc.reg_write(X.UC_X86_REG_ECX, c)
        uc.reg_write(X.UC_X86_REG_EDX, d)
        return True

    def _on_invalid(self):
        eip = self.quirks.eip()
        if self.stop is not None:
            self.clock.cut(eip, False)
            return False
        self.clock.cut(eip, True)
        self.exit_site(eip)
        if self._rdpmc(eip):
            return True
        if self.mode.on_invalid_opcode(eip):
            return True
        self.deliver_exception(UD, eip)
        return True

    def _on_unmapped(self, access, address, size, value):
        self.stop = unmapped_access(address)
        return False

    def _on_interrupt(self, intno):
        eip = self.quirks.eip()
        error, is_int = self.quirks.take_fault()
        int_start = self._int_start(eip, intno) if is_int else None     # before the clock's cut
        soft = is_int or intno >= 32 or intno in SOFT_ONLY_VECTORS
        if self.stop is not None:
            self.clock.cut(eip, False)
            self.uc.emu_stop()
            return
        if not soft and self.mode.retries_fault(intno, error):
            self.clock.cut(eip, False)          # runs again: counted then
            return
        if intno == DB and not soft and (eip + self.clock.code_base()) & 0xFFFFFFFF == self.clock.breakpoint_stop:
            # The slice's budget ends before this instruction (runtime/clock.py
            # `run`): it has not started; its #DB comes again after what is due.
            self.clock.breakpoint_stop = None
            self.clock.cut(eip, False)
            self.halt_slice()
            return
        if intno == DB and not soft and self._breakpoint_after_ss_load(eip):
            self.clock.cut(eip, False)          # runs now, with RF: counted then
            return
        if intno == DB and self.mode.rf_breakpoints is not None:
            self.mode.rf_breakpoints.sync()     # emulate: hooks for the RF block to come
        # The block ends here: a fault at EIP (started, as on hardware it counts
        # as an attempt), or EIP already past an int n that ended its block.
        self.clock.cut(eip, not soft)
        self.exit_site(eip)
        if soft or intno not in ERROR_CODE_VECTORS:
            error = None
        if self.mode.on_fault(intno, eip, error, soft):
            return
        self.deliver_exception(intno, eip, error, soft,
                               fault_eip=int_start)

    def _breakpoint_after_ss_load(self, eip: int) -> bool:
        """Unicorn (QEMU's check_hw_breakpoints) raised an instruction
        breakpoint's #DB on the instruction after a MOV SS / POP SS, which an
        Intel CPU (the model's) suppresses: run it with RF set instead
        (runtime/breakpoints.py does the same under trap and bt)."""
        from runtime.breakpoints import after_ss_load, engine_drs, exec_breakpoints
        if eip not in exec_breakpoints(engine_drs(self.uc)) or not after_ss_load(self, eip):
            return False
        self.uc.reg_write(X.UC_X86_REG_EFLAGS, self.uc.reg_read(X.UC_X86_REG_EFLAGS) | RF_BIT)
        return True

    def _rdpmc(self, eip: int) -> bool:
        """Unicorn treats every rdpmc as an invalid opcode (its helper is
        unimplemented in Unicorn 2.1.4's QEMU, helper_rdpmc), in every mode.  The P6 model has two
        counters that never count: ECX 0 or 1 reads 0; another counter, or
        CPL > 0 with CR4.PCE clear, #GP(0) (runtime/cpuid.py)."""
        if self.mem.try_read(eip, 2) != b"\x0f\x33":
            return False
        uc = self.uc
        if uc.reg_read(X.UC_X86_REG_ECX) >= cpuid_model.PMC_COUNTERS or \
                (self.guest_cpl() and not uc.reg_read(X.UC_X86_REG_CR4) & CR4_PCE):
            self.deliver_exception(GP, eip, 0)
            return True
        uc.reg_write(X.UC_X86_REG_EAX, 0)
        uc.reg_write(X.UC_X86_REG_EDX, 0)
        self.fast.reg_write(X.UC_X86_REG_EIP, eip + 2)
        return True

    def _int_start(self, after: int, intno: int) -> int:
        """The address of the `int n`/int3/into that raised `intno`, EIP now `after`.
        Unicorn reports a software interrupt with EIP already past it and keeps
        no record of its start (Unicorn 2.1.4's cpu_handle_exception: `env->eip =
        env->exception_next_eip`); the clock's table of the running block has
        it, prefixes included (asked before the clock's cut forgets the block).
        A fault while delivering the interrupt pushes this address."""
        for size in range(1, 16):
            start = (after - size) & 0xFFFFFFFF
            if self.clock.next(start) == after:
                return start
        # Not in the clock's table (not expected): the bytes without prefixes.
        two = self.mem.try_read((after - 2) & 0xFFFFFFFF, 2)
        if two is not None and two[0] == 0xCD and two[1] == intno:
            return (after - 2) & 0xFFFFFFFF
        return (after - 1) & 0xFFFFFFFF if two is not None and two[1] in (0xCC, 0xCE) else after

    def deliver_exception(self, vector, return_eip, error=None, soft=False, fault_eip=None):
        """Reflect an exception or software interrupt into the guest's IDT;
        `fault_eip`: what a fault while delivering it pushes (runtime/delivery.py)."""
        self.counters.add("exceptions_delivered", vector)
        try:
            self.delivery.deliver(vector, return_eip=return_eip, error_code=error, soft=soft,
                                  fault_eip=fault_eip)
        except TripleFault as tf:
            self.stop = Outcome.TRIPLE_FAULT.stop(str(tf))
            raise _Stop from None

    # -- run loop --------------------------------------------------------------
    def run(self) -> RunResult:
        wall0 = time.perf_counter()
        try:
            # Ctrl-C / SIGTERM only ask the slice to end (bt/interrupt.py); the
            # loop stops at the slice boundary, so the report is written as usual.
            with interrupt.stopping_with(self.halt_slice):
                self._loop()
        except VMMError as e:
            self.stop = Outcome.VMM_ERROR.stop(str(e))
        except OutsideRam as e:     # an interrupt's delivery (_inject) read past RAM
            self.stop = self.stop or unmapped_access(e.address)
        except BrokenPipeError:
            raise               # the guest's output has no reader left: the caller's to handle
        except KeyboardInterrupt:   # a SIGINT handler other than ours raised it
            interrupt.consume()
            self.stop = self.stop or Outcome.INTERRUPTED.stop("KeyboardInterrupt",
                                                             interrupt.status_for(2))
        except Exception as e:  # an internal bug still ends with a report, never a traceback
            self.stop = Outcome.VMM_ERROR.stop(f"{type(e).__name__}: {e}")
        if self.out is not None:
            self.out.flush()
        stop = self.stop
        wall = time.perf_counter() - wall0
        extra = {**self.mode.extra_report(), "protection_changes": self.protection_changes}
        if self.mmio.report():
            extra["mmio"] = self.mmio.report()
        if self.nmi.report():
            extra["nmi"] = self.nmi.report()
        if self.tasks.report():
            extra["task_switches"] = self.tasks.report()
        return RunResult(stop.status, stop.outcome, self.retired, self.vtime, wall,
                         bytes(self.serial), self._counter_dict(), stop.message, self._final_regs(),
                         self._vmm_time, extra)

    def _loop(self) -> None:
        while self.stop is None:
            if self.debugger is not None:
                self.debugger.pause_point()     # may wait for gdb, or end the run (kill)
                if self.stop is not None:
                    break
            signum = interrupt.consume()
            if signum is not None:
                self.stop = Outcome.INTERRUPTED.stop(
                    f"stopped by {interrupt.signal_name(signum)}", interrupt.status_for(signum))
                break
            self._inject()
            if self.stop is not None:
                break
            if self.halted:
                self._idle()
                continue
            n = self._slice_length()
            if n <= 0:
                self.stop = Outcome.BUDGET.stop("instruction budget exhausted")
                break
            self._run_slice(n)

    def _counter_dict(self) -> dict:
        if self._native_exits is not None:
            self._native_exits.drain(self.counters, self.mode.guest_address)
        d = self.counters.as_dict()
        d["io_native"] = self.io.answered
        d["io_by_port"] = {hex(k): v for k, v in sorted(self.bus.io_counts.items())}
        d["unhandled_port_reads"] = {hex(k): v for k, v in sorted(self.bus.unhandled_reads.items())}
        d["unhandled_port_writes"] = {hex(k): v for k, v in sorted(self.bus.unhandled_writes.items())}
        return d

    def _final_regs(self) -> dict:
        uc = self.uc
        regs = {n: uc.reg_read(getattr(X, f"UC_X86_REG_{n.upper()}"))
                for n in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip")}
        regs["eflags"] = self.guest_eflags()
        regs["cs"] = self.guest_selector(uc.reg_read(X.UC_X86_REG_CS))
        regs["ss"] = self.guest_selector(uc.reg_read(X.UC_X86_REG_SS))
        return self.mode.guest_regs(regs)

    def _slice_length(self) -> int:
        n = MAX_SLICE
        if self.config.max_instructions is not None:
            n = min(n, self.config.max_instructions - self.retired)
            if n <= 0:
                return 0
        ev = self.bus.next_event()
        if ev is not None:
            n = min(n, max(ev - self.vtime, 1))
        if self.pic.has_interrupt():
            n = min(n, POLL_SLICE)
        nmi_limit = self.nmi.slice_limit()
        if nmi_limit is not None:
            n = min(n, nmi_limit)
        limit = self.mode.slice_limit()
        if limit is not None:
            n = min(n, limit)
        if self.debugger is not None and self.debugger.slice_limit() is not None:
            n = min(n, self.debugger.slice_limit())     # a gdb stepi: one instruction
        if self._single_step:
            n = min(n, 1)
        return n

    def _run_slice(self, n: int) -> None:
        uc = self.uc
        self.counters.add("slices")
        self.mode.before_slice()
        self._slice_base = self.vtime
        self.tsc.before_slice(self.vtime)
        self._slice_end = self.vtime + n
        self._slice_n = n
        self._single_step = False
        self._vmm_stopped = self._abort_pending = False
        self._ended_at = None
        self._in_slice = True
        self.nmi.before_slice()
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        if self._watch_window:
            self.clock.set_irq_wait(self.pic.has_interrupt() and self.mode.window_watch_here())
        g = self.guard
        if g is not None:
            g.open = 0                  # guest code runs: only stubs reach the area
        try:
            err = self.clock.run(self.mode.pc_for(eip), n, lambda: self._vmm_stopped)
        finally:
            self._in_slice = False
            self._slice_n = 0
            if g is not None:
                g.open = 1
        if self._abort_pending:
            self.clock.cut(self.quirks.eip(), False)
        elif err is not None:
            # Unicorn gave up on an access (unmapped memory under emulate, the
            # guarded hypervisor area under trap and bt) at EIP: the block was
            # counted whole as it started; the rest of it never ran.  The
            # instruction counts as started, as a fault's does.
            self.clock.cut(self.quirks.eip(), True)
        if self._native_exits is not None:
            self._native_exits.drain(self.counters, self.mode.guest_address)
        self.io.drain()
        done = self.clock.count
        if self._ended_at is not None:          # see request_stop
            done, after = self._ended_at
            if after is not None:
                self.fast.reg_write(X.UC_X86_REG_EIP, after)
        self.retired += done
        self.vtime += done
        self.nmi.after_slice()
        if self._hook_error is not None:
            e, self._hook_error = self._hook_error, None
            # The host's reader went away (bt-run ... | head): not a VMM fault;
            # the CLI ends quietly (bt/cli/common.py quiet_on_closed_pipe).
            if isinstance(e, (VMMError, BadInput, BrokenPipeError, KeyboardInterrupt)):
                raise e
            raise VMMError(f"{type(e).__name__} in VMM hook: {e}") from e
        if err is not None and self.stop is None and not self.mode.claims_error(err):
            eip = uc.reg_read(X.UC_X86_REG_EIP)
            self.stop = Outcome.EMULATION_ERROR.stop(f"Unicorn stopped at {eip:#x}: {err}")
        self.bus.tick(self.vtime)
        if self.stop is None and not self._vmm_stopped and self.clock.reason == STOP_NONE:
            self.mode.on_unexpected_stop(uc.reg_read(X.UC_X86_REG_EIP))

    def on_hlt(self) -> None:
        """The guest executed hlt (in whatever way the mode observed it)."""
        self.counters.add("halts")
        self.halted = True

    def _idle(self) -> None:
        ev = self.bus.next_event()
        if not self.guest_eflags() & IF_BIT or ev is None:
            self.stop = Outcome.HANG.stop("guest halted with interrupts disabled or no timer armed")
            return
        self._idle_skips += 1
        if self._idle_skips > MAX_IDLE_SKIPS:
            self.stop = Outcome.HANG.stop("guest halted and no interrupt can reach it")
            return
        self.vtime = max(self.vtime, ev)
        self.bus.tick(self.vtime)

    def _inject(self) -> None:
        if self.nmi.deliverable():
            # Not masked by IF; held back where an interrupt is (a shadow, a
            # stub point under bt): runtime/nmi.py.
            if self.mode.may_inject():
                self._deliver_external(self.nmi.take())
            return
        if not self.pic.has_interrupt() or not self.guest_eflags() & IF_BIT:
            return
        if not self.mode.may_inject():
            return
        self._deliver_external(self.pic.acknowledge())

    def _deliver_external(self, vector: int) -> None:
        self.counters.add("exits")
        self.counters.add("interrupts_injected", vector)
        self.halted = False
        self._idle_skips = 0
        try:
            self.delivery.deliver(vector, return_eip=self.uc.reg_read(X.UC_X86_REG_EIP),
                                  external=True)
        except TripleFault as tf:
            self.stop = Outcome.TRIPLE_FAULT.stop(str(tf))
