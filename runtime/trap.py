"""`--mode trap`: the guest kernel deprivileged to ring 1, trap-and-emulate.

* World switch: the guest kernel runs at real CPL 1 with the real IOPL 1 and its
  own IF in the real EFLAGS, so cli, sti, popfd and iretd change IF natively as
  under emulate and interrupts are let in by the clock's window check as under
  emulate (docs/fidelity.md, "IF in the real EFLAGS"); guest user code runs at
  CPL 3.  The switch edits the CPL bits through the
  calibrated context (runtime/quirks.py) and loads the ring-1 selectors; the same
  mechanism lowers the CPL when an interrupt arrives from ring 3, so there is one
  tested path instead of two (an iretd trampoline would also need VMM-only
  descriptors in the shadow GDT beyond the guest's limit, where a guest selector
  could reach them).
* Ring compression: a shadow GDT (hypervisor area) is the real GDT; guest DPL 0
  descriptors become DPL 1 there.  The guest's own table is never modified by
  the compression.  It is rebuilt on lgdt; a guest store into the table's own
  bytes is copied into it as it happens by a write hook ranged on those bytes
  (runtime/tablewatch.py), so stores next to the table cost nothing.  The real IDT is an empty shadow:
  Unicorn never vectors, delivery reads the guest's own IDT at each delivery,
  so the guest's IDT needs no copy to keep in sync.
* The virtual CPU (runtime/vcpu.py) holds the kernel's IOPL, CR0-4, GDTR/IDTR/LDTR/TR,
  DR0-7 and MSRs in the hypervisor state page.
* Every fault at CPL 1 is decoded and either emulated (runtime/emulation.py:
  what ring compression made fault) or reflected into the guest IDT as the
  genuine fault it is.  The sensitive-but-unprivileged instructions do not trap
  and show the host's truth: that is trap-and-emulate's documented hole.
"""
from __future__ import annotations

import struct

from unicorn import UC_HOOK_MEM_WRITE, UC_MEM_WRITE_PROT
from unicorn import x86_const as X

from bt.catalog import by_name
from bt.errors import VMMError
from bt.hyper_layout import (HYPER_SIZE, REAL_IOPL_CPL1, SHADOW_GDT, SHADOW_GDT_SIZE, SHADOW_IDT, STATE,
                             VFLAGS_MASK, VMM_TSS)
from bt.x86 import (CR0_ET, CR0_PE, CR0_PG, DESC_ACCESSED, DESC_CODE, DESC_SIZE, DESC_DPL_SHIFT, DESC_PRESENT,
                    DESC_S, DESC_TYPE_MASK, GP, IF_BIT, NP, SS as SS_FAULT, TS, IOPL_MASK, PF, PF_ERR_WRITE,
                    SEL_INDEX_MASK, SEL_TI, SYS_CALL_GATE16, SYS_CALL_GATE32, SYS_TSS32_AVAILABLE,
                    TSS_BUSY_BIT, TSS_IOMAP_BASE, TSS32_SIZE, VM_BIT)
from patcher.policy import patched_on_fault
from runtime.areamove import AreaMover
from runtime.breakpoints import InstructionBreakpoints
from runtime.decode import SiteDecoder
from runtime.delivery import GuestFault
from runtime.emulation import NOT_MINE, emulate, has_routine, settle_irq_shadow
from runtime.hyper import HyperArea
from runtime.isolation import Isolation
from runtime.memory import AreaInUse, OutsideRam, PageFault
from runtime.modes import EmulateMode, StopSlice
from runtime.paging import HyperMapping
from runtime.realswitch import NATIVE_SLICE, RealModeSwitch
from runtime.segments import TASK_TYPES, check_stack_segment, names_task
from runtime.tablewatch import TableWatch
from runtime.taskreturn import claim_task_return
from runtime.vcpu import VirtualCPU


def _compressed_access(access: int) -> int:
    """Ring compression of one descriptor's access byte: a present DPL 0 segment
    or call gate becomes DPL 1; a TSS or task gate becomes DPL 0, so that a far
    jmp/call to it at CPL 1 always faults and the VMM switches tasks
    (runtime/taskswitch.py; the CPU's own switch would save the guest's state
    into the VMM's TSS, the real TR); anything else is copied as it is."""
    dpl = (access >> DESC_DPL_SHIFT) & 3
    if access & DESC_PRESENT and dpl == 0 and (
            access & DESC_S or access & DESC_TYPE_MASK in (SYS_CALL_GATE16, SYS_CALL_GATE32)):
        return access | (1 << DESC_DPL_SHIFT)
    if not access & DESC_S and access & DESC_TYPE_MASK in TASK_TYPES:
        return access & ~(3 << DESC_DPL_SHIFT)
    return access


class TrapMode(EmulateMode):
    # The guest's IF is the real IF: a waiting interrupt is let in where it rises
    # by the clock's window check, as under emulate (EmulateMode.may_inject).
    watches_irq_window = True
    name = "trap"
    runs_at_cpl0 = False        # rdmsr/wrmsr/mov cr4 fault at CPL 1 (runtime/emulation.py)
    # The guest may turn paging on (runtime/paging.py keeps the hypervisor area
    # reachable).  bt says False until CSAM keys its scans by physical code.
    paging_guests = True

    def __init__(self, vm):
        super().__init__(vm)
        cfg = vm.config
        self.hyper = HyperArea(self.uc, cfg.hyper_base, cfg.mem_bytes)
        self.isolation = Isolation(vm, self.hyper)
        vm.guard = self.isolation.guard
        self.vcpu = VirtualCPU(self.uc, self.hyper.addr(STATE), self.hyper.host + STATE)
        self.stop_slice = False
        # Without paging linear == physical and a cached site is re-validated
        # with one direct read: from the host memory that is guest RAM (an mmap
        # slice, ~0.2 us) or, outside RAM (stubs in the hypervisor area), through
        # the engine (~2.5 us).  With paging on it goes through the walk
        # (runtime/memory.py), so a CR3 switch that puts other code at the same
        # address is decoded anew.
        self.decoder = SiteDecoder(vm.mem.try_read, self._site_bytes)
        self.gdt_watch = TableWatch(self.uc, lambda fn: vm.guarded(fn, None), self._on_gdt_store)
        self.gdt_stores = 0         # guest stores into its GDT's bytes (copied into the shadow, no exit)
        self.gdt_syncs = 0
        self._gdt_hook = None
        self._far_load = False      # a far transfer's segment load: no accessed bit (load_far)
        self.hook_shadow_gdt()
        self.hyper_mapping = HyperMapping(self)
        self.mover = AreaMover(self)
        # CR0.PE clear: the guest runs natively at real CPL 0 (runtime/realswitch.py)
        self.native = RealModeSwitch(self)
        # DR0-DR3/DR7 execute breakpoints, which Unicorn never arms here
        self.breakpoints = InstructionBreakpoints(vm)
        vm.mem.area_in_use = self._maps_area
        # invlpg at CPL 1 always ends as runtime/emulation.py `_invlpg` (a TLB
        # flush, EIP past it): answered by the native hook (runtime/exits.py),
        # as long as bt never patches it on its first fault.
        if vm._native_exits is not None and not patched_on_fault(by_name("invlpg")):
            vm._native_exits.enable_invlpg()
        # So does `mov cr3, r32` under two-level paging while the area's slot
        # only moves with it (write_cr below; runtime/_exits.c): the native hook
        # then keeps the slot's state, which HyperMapping reads there.
        if vm._native_exits is not None and not patched_on_fault(by_name("mov_to_cr")):
            vm._native_exits.enable_mov_cr3()
            self.hyper_mapping.attach_native(vm._native_exits.x)

    # -- boot: into ring 1 ----------------------------------------------------------
    def boot(self) -> None:
        uc, v = self.uc, self.vcpu
        _, gbase, glimit, _ = uc.reg_read(X.UC_X86_REG_GDTR)
        v.set("gdtr", glimit, gbase)
        v.set("idtr", 0x3FF, 0)
        # The virtual CPU starts as Unicorn at CPL 0 starts (emulate is the
        # reference): its CR0 (BOOT_CR0 with ET), CR4 (Unicorn sets OSFXSR,
        # FSGSBASE, OSXSAVE) and debug registers (DR6/DR7's fixed-one bits).
        v.set("cr0", uc.reg_read(X.UC_X86_REG_CR0))
        boot_cr4 = uc.reg_read(X.UC_X86_REG_CR4)
        v.set("cr4", boot_cr4)
        v.set("dr", *(uc.reg_read(getattr(X, f"UC_X86_REG_DR{n}")) for n in range(8)))
        v.vflags = uc.reg_read(X.UC_X86_REG_EFLAGS) & VFLAGS_MASK
        self.sync_shadow_gdt()
        uc.reg_write(X.UC_X86_REG_IDTR, (0, self.hyper.addr(SHADOW_IDT), 0x7FF, 0))
        # The real TR names a VMM TSS (I/O bitmap denying every port) instead of
        # the reset TR, which points at guest RAM.  Unicorn 2.1 does not check I/O
        # permission at all (the in/out hooks see every access, at any CPL), so
        # this only keeps the real state well-defined for a CPU that would.
        tss = self.hyper.addr(VMM_TSS)
        uc.mem_write(tss, bytes(TSS_IOMAP_BASE) + struct.pack("<H", TSS32_SIZE))   # I/O map base past the limit
        uc.reg_write(X.UC_X86_REG_TR, (0, tss, TSS32_SIZE - 1, (DESC_PRESENT | SYS_TSS32_AVAILABLE) << 8))
        # The real CR4.TSD is the guest's: with it clear rdtsc runs at CPL 1 and 3
        # and the virtual TSC's native hook answers it (runtime/tsc.py); with it
        # set it faults at CPL 1 (emulated: the guest kernel may read it) and 3.
        uc.reg_write(X.UC_X86_REG_CR4, boot_cr4)
        cs = uc.reg_read(X.UC_X86_REG_CS)
        ss = uc.reg_read(X.UC_X86_REG_SS)
        self.vm.quirks.set_cpl(1)
        uc.reg_write(X.UC_X86_REG_SS, ss | 1)
        uc.reg_write(X.UC_X86_REG_CS, cs | 1)
        for r in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
            uc.reg_write(r, uc.reg_read(r))
        self._write_real_flags(uc.reg_read(X.UC_X86_REG_EFLAGS))

    # -- ring compression ---------------------------------------------------------
    def sync_shadow_gdt(self) -> None:
        """Rebuild the shadow GDT from the guest's and (re)arm write monitoring."""
        base, limit = self.vcpu.gdtr()
        size = min(limit + 1, SHADOW_GDT_SIZE)
        table = bytearray(size)
        # lgdt itself reads nothing: a table (partly) outside RAM or unmapped is
        # copied as far as it can be; a later load through the missing part ends
        # the run as emulate's (Delivery.descriptor, check_table_fault).
        for off in range(0, size, DESC_SIZE):
            try:
                table[off:off + DESC_SIZE] = self.vm.mem.read_cpu(base + off, DESC_SIZE, mark=False)[:size - off]
            except (PageFault, OutsideRam):
                pass
        for off in range(8, len(table) - 7, 8):
            table[off + 5] = _compressed_access(table[off + 5])
        self.uc.mem_write(self.hyper.addr(SHADOW_GDT), bytes(table))
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, self.hyper.addr(SHADOW_GDT), limit, 0))
        self.gdt_syncs += 1
        self._monitor_gdt(base, size)

    def _on_gdt_store(self, off: int, data: bytes) -> None:
        """A guest store into its GDT at table offset `off`, about to land
        (runtime/tablewatch.py): copy it into the shadow now, compressing every
        descriptor it touches as the sync does, so the next selector load (even
        the next instruction) uses it.  Written through host memory: no engine
        call from inside the store."""
        base, limit = self.vcpu.gdtr()
        size = min(limit + 1, SHADOW_GDT_SIZE)
        end = min(off + len(data), size)
        if off >= end:
            return
        self.gdt_stores += 1
        shadow = self.hyper.mem
        first, last = off & ~(DESC_SIZE - 1), (end - 1) & ~(DESC_SIZE - 1)
        for d in range(first, last + DESC_SIZE, DESC_SIZE):
            n = min(DESC_SIZE, size - d)
            try:
                desc = bytearray(self.vm.mem.read_cpu(base + d, n))
            except (PageFault, OutsideRam):
                desc = bytearray(shadow[SHADOW_GDT + d:SHADOW_GDT + d + n])   # unreadable: as the sync left it
            for i in range(max(off, d), min(end, d + n)):
                desc[i - d] = data[i - off]                # the bytes the store is about to write
            if d >= DESC_SIZE and n == DESC_SIZE:
                desc[5] = _compressed_access(desc[5])
            shadow[SHADOW_GDT + d:SHADOW_GDT + d + n] = desc

    def hook_shadow_gdt(self) -> None:
        """(Re)install the accessed-bit hook on the shadow GDT's current range.

        The shadow copies the guest's accessed bits, so the CPU sets a clear one
        in the shadow when a selector is loaded (an instruction, or the VMM's own
        reg_write at delivery: Unicorn sets it on both paths and a write hook on
        the table sees that store; tests/runtime/test_unicorn_facts.py).  The
        hook copies the bit into the guest's own table, where the CPU would have
        set it.  It fires once per descriptor whose bit was clear, and nothing
        else writes the shadow from inside the engine (syncs are host writes)."""
        if self._gdt_hook is not None:
            self.uc.hook_del(self._gdt_hook)
        lo = self.hyper.addr(SHADOW_GDT)
        self._gdt_hook = self.uc.hook_add(UC_HOOK_MEM_WRITE, self.vm.guarded(self._on_shadow_gdt_write),
                                          begin=lo, end=lo + SHADOW_GDT_SIZE - 1)

    def load_far(self, reg: int, real_sel: int, fast=None) -> None:
        """Load CS (or the SS of a return to ring 3) as an emulated far transfer:
        jmp/call far, retf, iretd.  The CPU's far transfers do not set the
        descriptor's accessed bit, Unicorn's reg_write does
        (tests/runtime/test_unicorn_facts.py): so the shadow's bit is put back
        afterwards and the guest's table, and the dirty bit of its page, are left
        as under emulate (tests/runtime/test_gdt_accessed_bits.py)."""
        at = SHADOW_GDT + (real_sel & SEL_INDEX_MASK) + 5
        mem = self.hyper.mem
        clear = not real_sel & SEL_TI and at < SHADOW_GDT + SHADOW_GDT_SIZE and not mem[at] & DESC_ACCESSED
        self._far_load = clear
        try:
            (fast or self.uc).reg_write(reg, real_sel)
        finally:
            if clear:
                self._far_load = False
                mem[at] &= ~DESC_ACCESSED

    def _on_shadow_gdt_write(self, access, address, size, value):
        if self._far_load:
            return              # load_far: the CPU's far transfer writes nothing
        off = address - self.hyper.addr(SHADOW_GDT)
        # Only the CPU's own write-back counts: the descriptor as it is with the
        # accessed bit set.  A guest store into the area (refused by the guard
        # after this hook ran: runtime/isolation.py) must not reach its GDT.
        old = int.from_bytes(self.uc.mem_read(address, size), "little")
        a_bits = sum(DESC_ACCESSED << (8 * i) for i in range(size) if (off + i) % DESC_SIZE == 5)
        if value & ((1 << (8 * size)) - 1) != old | (value & a_bits) or not value & a_bits:
            return
        for i in range(size):
            if (off + i) % DESC_SIZE == 5 and (value >> (8 * i)) & DESC_ACCESSED:
                base, limit = self.vcpu.gdtr()
                if off + i > limit:
                    continue
                # Into the host memory behind guest RAM: uc.mem_write from inside
                # the engine's own descriptor store crashes Unicorn (seen: SIGSEGV).
                try:
                    phys = self.vm.mem.translate(base + off + i)
                except PageFault:
                    continue       # the guest's table is not mapped: nothing to mark
                ram = self.vm._ram
                if phys < len(ram):
                    ram[phys] |= DESC_ACCESSED
                    # The CPU's write-back is a store through the guest's
                    # tables: it sets the accessed and dirty bits of the
                    # entries mapping the table's page, as emulate's does.
                    self.vm.mem.mark_accessed(base + off + i, 1, write=True, host=True)

    def _monitor_gdt(self, base: int, size: int) -> None:
        def phys(lin):
            try:
                p = self.vm.mem.translate(lin)
            except PageFault:
                return None
            return p if p < self.vm.config.mem_bytes else None
        self.gdt_watch.watch(base, size, phys)

    def claims_error(self, err) -> bool:
        """A refused access to the hypervisor area ended the slice: the run ends
        as emulate's would (runtime/isolation.py).  Under paging the area is
        there only through the VMM's directory entry and the guest's own entry
        is not present (runtime/paging.py): the guest gets the #PF emulate's
        guest gets there (not present; W for a store) at the abandoned
        instruction."""
        if self.hyper_mapping.slots:
            self.hyper_mapping.notice()
            hit = self.isolation.guard.take()
            if hit is None:
                return False
            if claim_task_return(self, hit):
                return True
            kind, address = hit
            eip = self.uc.reg_read(X.UC_X86_REG_EIP)
            if self.hyper_mapping.guest_entry(address) is not None:
                # The guest's own entry maps these addresses: move the area
                # away and run the instruction again, uncounted (as a retried
                # fault), or end the run (runtime/areamove.py).
                if self.mover.on_use(address, kind == UC_MEM_WRITE_PROT):
                    # The VM counted the abandoned instruction as started
                    # (runtime/vm.py, its cut after an error): it runs again.
                    self.vm.retired -= 1
                    self.vm.vtime -= 1
                self.vm._vmm_stopped = True
                return True
            error = PF_ERR_WRITE if kind == UC_MEM_WRITE_PROT else 0
            # Counted as emulate counts a fault: the slice's count was already
            # added whole (runtime/vm.py asks after adding it), so take back
            # what the cut removes.
            counted = self.vm.clock.count
            if self.vm.clock.cut(eip, True):
                self.vm.retired -= counted - self.vm.clock.count
                self.vm.vtime -= counted - self.vm.clock.count
            self.vm.counters.add("faults_reflected", PF)
            self.write_cr(2, address)
            self.vm._vmm_stopped = True      # the slice's end is accounted for
            try:
                self.vm.deliver_exception(PF, eip, error)
            except StopSlice:
                pass                         # a triple fault: the run's end is set
            return True
        return self.isolation.claim(lambda hit: claim_task_return(self, hit))

    # -- a guest that uses the area's addresses (runtime/areamove.py) ------------------
    def runs_own_code(self, eip: int) -> bool:
        """True when the CPU is at code the VMM put in the area (bt's stubs):
        a fault there is the VMM's reach for the area, not the guest's."""
        return False

    def _maps_area(self, linear: int) -> bool:
        return bool(self.hyper_mapping.slots) and self.hyper_mapping.guest_entry(linear) is not None

    @property
    def relocations(self) -> int:
        return self.mover.relocations

    def before_slice(self) -> None:
        if self.native.active and self.native.ready_to_leave():
            self.native.leave()
        self.hyper_mapping.notice()
        self.mover.before_slice()
        self.breakpoints.before_slice()

    def slice_limit(self) -> int | None:
        # While the guest runs natively, the stretch is checked for its end
        # at least every NATIVE_SLICE instructions (runtime/realswitch.py).
        return NATIVE_SLICE if self.native.active else None

    def relocate_hyper(self, new_base: int) -> None:
        """Move the hypervisor area between slices (runtime/areamove.py)."""
        self.mover.relocate(new_base)

    def _relocate_users(self, old: int, new: int) -> None:
        """Hook for what else points into the area (bt: its stubs and patches)."""

    def _after_relocation(self) -> None:
        """Hook run once the area is at its new base (bt: the clock's stub starts)."""

    def host_regions(self) -> list[tuple[int, int, int]]:
        return [(self.hyper.base, HYPER_SIZE, self.hyper.host)]

    def guest_visible(self, address: int, size: int) -> bytes:
        """Guest memory as the guest believes it is (bt hides its patches)."""
        data = self.vm.fast.mem_read(address, size)
        if self.hyper_mapping.slots:
            return self.hyper_mapping.guest_visible(address, data)
        return data

    def on_watched_write(self, page: int, address: int, size: int) -> None:
        """The VMM stored into guest RAM for the guest (the debugger, bt/gdb/target.py)
        at physical [address, address + size): a host write no hook sees, so the
        shadow GDT is rebuilt if it touched the table."""
        if any(lo < address + size and address < hi for lo, hi, _ in self.gdt_watch.runs):
            self.sync_shadow_gdt()

    def load_gdt(self, base: int, limit: int) -> None:
        self.vcpu.set("gdtr", limit, base)
        self.sync_shadow_gdt()

    def load_tr(self, selector: int) -> None:
        desc = self.vm.delivery.descriptor(selector)
        if desc.access & (DESC_S | DESC_TYPE_MASK & ~TSS_BUSY_BIT) != SYS_TSS32_AVAILABLE:  # busy or not
            raise GuestFault(GP, selector & 0xFFFC)
        base, _ = self.vcpu.gdtr()
        off = base + (selector & SEL_INDEX_MASK) + 5
        busy = self.vm.mem.read(off, 1)[0] | TSS_BUSY_BIT  # the CPU marks the TSS busy
        self.vm.mem.write(off, bytes([busy]))
        self.vcpu.set("tr", selector)
        self.sync_shadow_gdt()

    # -- what a task switch reads and loads (runtime/taskswitch.py) ---------------------
    # The real TR stays the VMM's TSS; the guest's TR and LDTR are the virtual CPU's.
    def guest_tr(self) -> tuple[int, int, int, int]:
        sel = self.vcpu.get("tr")
        if not sel:
            return 0, 0, 0xFFFF, DESC_PRESENT | TSS_BUSY_BIT | SYS_TSS32_AVAILABLE   # the reset TR
        desc = self.vm.delivery.descriptor(sel)
        return sel, desc.base, desc.limit, desc.access

    def set_guest_tr(self, sel: int, base: int, limit: int, access: int) -> None:
        self.vcpu.set("tr", sel)

    def set_guest_ldtr(self, sel: int) -> None:
        self.vcpu.set("ldtr", sel)

    def load_task_cs(self, real_sel: int) -> None:
        self.load_far(X.UC_X86_REG_CS, real_sel)

    def on_gdt_changed_by_vmm(self) -> None:
        self.sync_shadow_gdt()

    def check_code_selector(self, sel: int) -> None:
        desc = self.vm.delivery.descriptor(sel)
        if not desc.access & DESC_CODE or not desc.present:
            raise GuestFault(GP, sel & 0xFFFC)

    def load_ss(self, sel: int):
        """Load SS as the CPU at the guest's CPL does (runtime/segments.py): trap
        gets here when an RPL-0 load faulted at CPL 1; bt for every SS load (an
        RPL-1 selector loads at CPL 1 but faults at CPL 0: issue 15 cause 6)."""
        check_stack_segment(self, sel)
        cpl = self.guest_cpl()
        self.uc.reg_write(X.UC_X86_REG_SS, self.real_selector(sel, cpl))
        return None

    # -- control registers ----------------------------------------------------------
    def read_cr(self, n: int) -> int:
        return self.vcpu.get(f"cr{n}")

    def write_cr(self, n: int, value: int) -> None:
        value &= 0xFFFFFFFF
        uc = self.uc
        if n == 0:
            value |= CR0_ET            # hard-wired to 1 (Unicorn at CPL 0 reads it back set)
            if value & CR0_PG and not self.paging_guests:
                raise VMMError(f"the guest enabled paging: {self.name} mode does not support "
                               "paging guests yet (run it with --mode emulate or trap; docs/paging-plan.md)")
            self.vcpu.set("cr0", value)
            if not value & CR0_PE:          # real mode: run it natively (runtime/realswitch.py)
                self.native.enter(value)
                return
            uc.reg_write(X.UC_X86_REG_CR0, value | CR0_PE)
            self.hyper_mapping.sync()
        elif n == 2:
            self.vcpu.set("cr2", value)
            uc.reg_write(X.UC_X86_REG_CR2, value)
        elif n == 3:
            self.vcpu.set("cr3", value)
            uc.reg_write(X.UC_X86_REG_CR3, value)     # flushes the TLB as mov cr3 does (fact test)
            self.hyper_mapping.sync()
        elif n == 4:
            self.vcpu.set("cr4", value)
            uc.reg_write(X.UC_X86_REG_CR4, value)     # TSD included: see boot
            self.hyper_mapping.sync()

    def virtual_tsc(self) -> int:
        """One TSC tick per virtual instruction: deterministic, and cpu_mhz is the TSC rate."""
        return self.vm.now() + self.vcpu.tsc_offset

    # -- helpers for emulation routines -------------------------------------------------
    def seg_base(self, seg_reg: int) -> int:
        sel = self.guest_selector(self.vm.fast.reg_read(seg_reg))
        if sel < 4:
            return 0
        try:
            return self.vm.delivery.descriptor(sel).base
        except GuestFault:
            return 0

    def stack_base(self) -> int:
        return self.seg_base(X.UC_X86_REG_SS)

    def guest_read(self, addr: int, size: int) -> bytes:
        # Only RAM is there for the guest: a routine's access outside it (the
        # hypervisor area) raises OutsideRam, which ends the run as emulate's
        # unmapped access does (VM.guarded).
        try:
            return self.vm.mem.read_cpu(addr, size)
        except PageFault as pf:
            raise GuestFault(PF, pf.error_code, pf.linear) from None

    def guest_write(self, addr: int, data: bytes) -> None:
        try:
            self.vm.mem.read_cpu(addr, len(data), mark=False)   # outside RAM: OutsideRam, as above
            self.vm.mem.write(addr, data)
        except PageFault as pf:
            raise GuestFault(PF, pf.error_code | PF_ERR_WRITE, pf.linear) from None

    def after_if_change(self) -> None:
        """An emulated instruction (iretd) may have set IF: let a waiting interrupt
        in right after it, as the CPU does."""
        if self.guest_eflags() & IF_BIT and self.vm.pic.has_interrupt():
            self.stop_slice = True

    def _site_bytes(self, eip: int, n: int) -> bytes:
        if self.vm.mem.paging():
            return self.vm.mem.try_read(eip, n)
        ram = self.vm._ram
        if eip + n <= len(ram):
            return ram[eip:eip + n]
        return self.vm.fast.mem_read(eip, n)

    # -- the exit dispatcher ----------------------------------------------------------
    def retries_fault(self, vector: int, error: int | None = None) -> bool:
        """A #PF at the area's addresses because a guest store replaced the VMM's
        directory entry (runtime/paging.py, `notice`): the entry is back, and the
        instruction runs again as if nothing happened (no guest-visible fault)."""
        hm = self.hyper_mapping
        if vector != PF or not hm.slots:
            return False
        cr2 = self.uc.reg_read(X.UC_X86_REG_CR2)
        if not self.hyper.contains(cr2):
            return False
        if hm.notice():
            hm.faults_retried += 1
            return True
        if hm.guest_entry(cr2) is not None and self.uc.reg_read(X.UC_X86_REG_CS) & 3 == 3 \
                and not self.runs_own_code(self.uc.reg_read(X.UC_X86_REG_EIP)):
            # Ring 3 met the VMM's supervisor-only entry where the guest's own
            # entry maps the address: the area moves before the next slice
            # and the access runs again then.  With no slot the run ends at
            # it, counted as started as emulate's unmapped access is (the VM
            # cuts a retried fault as not started).
            if not self.mover.on_use_in_hook(cr2, bool((error or 0) & PF_ERR_WRITE)):
                self.vm.retired += 1
                self.vm.vtime += 1
            return True
        return False

    def on_fault(self, vector: int, eip: int, error, soft: bool, insn=None) -> bool:
        """`insn`: the site already decoded by this exit (bt), else decoded here."""
        vm = self.vm
        if self.native.active:          # the guest at real CPL 0: every fault is its own
            vm.counters.add("faults_reflected", vector)
            return False
        cpl = vm.quirks.cpl()
        if vector == PF:
            cr2 = self.uc.reg_read(X.UC_X86_REG_CR2)
            self.vcpu.set("cr2", cr2)
            if self.hyper_mapping.slots and self.hyper.contains(cr2):
                # Ring 3 touched the area's addresses and met the VMM's
                # supervisor-only entry (P set); the guest's own entry is not
                # present (runtime/paging.py), so it sees not-present.
                if error & 1:
                    vm.counters.add("faults_reflected", vector)
                    vm.deliver_exception(PF, eip, error & ~1)
                    return True
        self.check_table_fault(vector, error, soft)
        # (An iret with NT=1 never faults here: its read of the VMM's TSS is
        # refused by the guard first, runtime/taskreturn.py.)
        # #GP(selector) at CPL 3 on a TSS or task gate: the shadow GDT holds
        # them with DPL 0 (`_compressed_access`), so a far jmp/call to a DPL-3
        # one faults at ring 3 too; the routine switches at the guest's CPL.
        task_far = (cpl == 3 and vector == GP and not soft and bool(error)
                    and names_task(self, error))
        if soft or (cpl != 1 and not task_far) or vector != GP:
            vm.counters.add("faults_reflected", vector)
            return False
        if insn is None:
            insn = self.decoder.at(eip)
        row = insn.row if insn else None
        if task_far and (row is None or row.name not in ("jmp_far", "call_far")):
            vm.counters.add("faults_reflected", vector)
            return False
        if not has_routine(row):
            vm.counters.add("faults_reflected", vector)
            return False
        self.stop_slice = False
        try:
            resume = emulate(self, row, insn, eip)
        except AreaInUse as use:
            # The routine's operand lies in the area's addresses, which the
            # guest's own entry maps: move the area first (between slices),
            # then the instruction faults and is emulated again.
            if self.mover.on_use_in_hook(use.linear, use.write):
                self.mover.uncount += 1
            return True
        except GuestFault as f:
            vm.counters.add("faults_reflected", f.vector)
            if f.cr2 is not None:
                self.write_cr(2, f.cr2)
            # A fault after a task switch's commit point is the new task's.
            vm.deliver_exception(f.vector, eip if f.task_eip is None else f.task_eip, f.error_code)
            return True
        if resume is NOT_MINE:
            vm.counters.add("faults_reflected", vector)
            return False
        vm.counters.add("faults_emulated", insn.mnemonic)
        settle_irq_shadow(vm.quirks, row)
        self.after_emulated_fault(insn, eip)
        if resume is not None:
            self.on_vmm_branch(resume)
        vm.fast.reg_write(X.UC_X86_REG_EIP, (eip + insn.size) if resume is None else resume)
        if self.stop_slice or vm.stop is not None:
            self.stop_slice = False
            raise StopSlice
        return True

    def check_table_fault(self, vector: int, error, soft: bool) -> None:
        """The CPU faulted on a selector whose descriptor the shadow GDT lacks
        because the guest's lies outside RAM: under emulate the CPU's load of
        that descriptor is an unmapped access, so this is too (OutsideRam)."""
        if soft or vector not in (GP, NP, SS_FAULT, TS) or not error or error & SEL_TI:
            return
        base, limit = self.vcpu.gdtr()
        index = error & SEL_INDEX_MASK
        if index and index + DESC_SIZE - 1 <= limit:
            try:
                self.vm.mem.read_cpu(base + index, DESC_SIZE)
            except PageFault:
                pass

    def after_emulated_fault(self, insn, eip: int) -> None:
        """Hook for bt mode's fault-driven patching."""

    # -- the guest's view -------------------------------------------------------------
    # While the guest runs natively (runtime/realswitch.py) every answer is
    # emulate's: the real state is the guest's.
    def _real_cpl(self) -> int:
        if self.uc.reg_read(X.UC_X86_REG_EFLAGS) & VM_BIT:     # V86 code runs at CPL 3
            return 3
        return self.uc.reg_read(X.UC_X86_REG_CS) & 3

    def real_mode(self) -> bool:
        if self.native.active:
            return super().real_mode()
        return not self.vcpu.get("cr0") & CR0_PE

    def guest_cpl(self) -> int:
        if self.native.active:
            return super().guest_cpl()
        cpl = self._real_cpl()
        return 0 if cpl == 1 else cpl

    def ring_of(self, guest_ring: int) -> int:
        if self.native.active:
            return guest_ring
        return 1 if guest_ring == 0 else guest_ring

    def guest_selector(self, real_sel: int) -> int:
        if self.native.active:
            return real_sel
        return real_sel & ~3 if real_sel & 3 == 1 else real_sel

    def real_selector(self, guest_sel: int, guest_ring: int) -> int:
        if self.native.active:
            return guest_sel
        return (guest_sel & ~3) | 1 if guest_ring == 0 else guest_sel

    # At CPL 1 the real EFLAGS are the guest's but for IOPL (real 1, the guest's
    # in vflags); at CPL 3 they are the guest's (bt enters ring 3 only through
    # the VMM, which writes them; trap's native iretd to ring 3 keeps the real
    # IOPL 1: trap's one flag leak left, docs/fidelity.md "IF in the real EFLAGS").
    def guest_eflags(self) -> int:
        real = self.uc.reg_read(X.UC_X86_REG_EFLAGS)
        # (VM: V86 code at CPL 3, runtime/v86.py; tested here to spare _real_cpl's second read)
        if real & VM_BIT or self.uc.reg_read(X.UC_X86_REG_CS) & 3 == 3 or self.native.active:
            return real
        return (real & ~VFLAGS_MASK) | self.vcpu.vflags

    def set_guest_eflags(self, value: int) -> None:
        # Which ring the flags are for is decided by the CPL at the time of the
        # write: delivery writes them after switching CS to the handler's ring.
        self.vcpu.vflags = value & VFLAGS_MASK
        if self._real_cpl() == 3 or self.native.active:
            self.uc.reg_write(X.UC_X86_REG_EFLAGS, value)
            return
        self._write_real_flags(value)

    def _write_real_flags(self, value: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_EFLAGS, (value & ~IOPL_MASK) | REAL_IOPL_CPL1)

    def guest_gdtr(self) -> tuple[int, int]:
        if self.native.active:
            return super().guest_gdtr()
        return self.vcpu.gdtr()

    def guest_idtr(self) -> tuple[int, int]:
        if self.native.active:
            return super().guest_idtr()
        return self.vcpu.idtr()

    def guest_tr_base(self) -> int | None:
        if self.native.active:
            return super().guest_tr_base()
        tr = self.vcpu.get("tr")
        if not tr:
            return None
        return self.vm.delivery.descriptor(tr).base

    def extra_report(self) -> dict:
        snap = self.vcpu.snapshot()
        return {"virtual_cpu": {k: (hex(v) if isinstance(v, int) else [hex(x) for x in v])
                                for k, v in snap.items()},
                "hypervisor_base": hex(self.hyper.base),
                **({"hypervisor_relocations": self.relocations} if self.relocations else {}),
                **({"paging": self.hyper_mapping.stats()} if self.hyper_mapping.inserts else {}),
                **({"real_mode": {"entries": self.native.entries, "exits": self.native.exits,
                                  "native_at_end": self.native.active}} if self.native.entries else {}),
                "shadow_gdt_syncs": self.gdt_syncs, "gdt_stores": self.gdt_stores}
