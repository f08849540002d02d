"""`--mode bt`: trap-and-emulate plus binary translation (CSAM + PATM).

BTMode wires four parts together on top of `trap` mode:
* CSAM (runtime/csam.py): lazy scanning, int3 guards on unresolved indirect
  branches, self-modifying-code handling; it reports every new site;
* the patch policy (patcher/policy.py): what to do with a site, from its
  catalog row, its CFG neighbourhood and what is installed;
* the patcher (patcher/patches.py): installs and removes the patches;
* the exits of patched code, here: int3 patches and stub exits run the site's
  emulation routine; fault-driven patching turns the first trap of a patchable
  site (cli, sti, iretd) into a jump patch and resumes at the site, so the stub
  performs it; faults inside stubs are mapped back to guest addresses, so
  nothing the guest or the report sees names a stub address.
"""
from __future__ import annotations

from unicorn import x86_const as X

from bt.errors import VMMError
from bt.hyper_layout import FLAG_TABLES, REAL_IOPL_CPL1, SELECTOR_VIEW, flag_tables, selector_view_table
from bt.x86 import (BP, CR4_PAE, CR4_PSE, DESC_CODE, DESC_FLAG_D, GP, IF_BIT, IOPL_MASK, IOPL_SHIFT, PAGE, PF,
                    PTE_P, PTE_PS, UD, VM_BIT)
from patcher import policy
from patcher.patches import Patcher
from patcher.policy import Action, Neighbourhood
from patcher.stubcache import StubCache
from patcher.templates import Insn as PInsn
from runtime.counters import CSAM_STATS, PATCH_STATS, Counters
from runtime.csam import CSAM
from runtime.decode import decode
from runtime.delivery import GuestFault
from runtime.emulation import NOT_MINE, emulate, has_routine, settle_irq_shadow
from runtime import segments
from runtime.memory import OutsideRam
from runtime.v86 import in_v86
from runtime.modes import StopSlice
from runtime.ring3pass import Ring3Passage
from runtime.trap import TrapMode

IN_STUB_SLICE = 64   # slice length while EIP is inside patch code (no injection there)
_GPR = {"eax": X.UC_X86_REG_EAX, "ebx": X.UC_X86_REG_EBX, "ecx": X.UC_X86_REG_ECX,
        "edx": X.UC_X86_REG_EDX, "esi": X.UC_X86_REG_ESI, "edi": X.UC_X86_REG_EDI}

class BTMode(TrapMode):
    name = "bt"
    # CSAM under paging: views (runtime/views.py; docs/paging-plan.md).
    paging_guests = True

    def __init__(self, vm):
        super().__init__(vm)
        self.cache = StubCache(self.uc, self.hyper.base)
        # Stub instructions count as the guest instructions they translate.
        vm.clock.c.set_stub_starts(self.cache.start, self.cache.starts)
        self.patcher = Patcher(self.uc, self.cache, self.vcpu.state_addr,
                               self._raw_read, self._raw_write, self._flush,
                               Counters(PATCH_STATS))
        # A freed stub's guest-access marks go with it (its space is reused).
        self.patcher.on_free = lambda lo, hi: self.isolation.guard.mark(lo, hi, False)
        # The flag stubs are assembled for the guest's IOPL (patcher/templates.py
        # IOPL_TEMPLATES): every change of it rewrites them.
        self.patcher.iopl = self.vcpu.vflags >> IOPL_SHIFT
        self.vcpu.on_iopl = lambda vflags: self.patcher.set_iopl(vflags >> IOPL_SHIFT)
        self.stats = Counters(CSAM_STATS)
        self.csam = CSAM(self, self.patcher, self.stats, self._place_patches)
        self._patched_fault_sites: set[int] = set()
        self.passage = Ring3Passage(self)
        # Patch cli/sti found by the scanner right away (PATM did), instead of
        # waiting for their first trap; fault-driven patching covers the rest.
        self._scan_patches_privileged = vm.config.eager_privileged_patches

    @property
    def cfg(self):
        return self.csam.cfg

    @property
    def guards(self) -> dict:
        return self.csam.guards

    # -- memory -------------------------------------------------------------------
    # Code bytes by linear address (patch sites, guards, stubs), through the
    # physical page of the address's CSAM view (runtime/views.py):
    # a page at a time, since consecutive linear pages need not be consecutive
    # physical ones.
    def _pieces(self, addr: int, n: int):
        while n > 0:
            k = min(n, PAGE - (addr & (PAGE - 1)))
            yield addr, k
            addr, n = addr + k, n - k

    def _raw_read(self, addr: int, n: int) -> bytes:
        if not self.csam.frame_of and not self.csam.paging():
            return self.vm.mem.fast.mem_read(addr, n)
        return b"".join(bytes(self.vm.mem.fast.mem_read(self.csam.phys(a), k))
                        for a, k in self._pieces(addr, n))

    def _raw_write(self, addr: int, data: bytes) -> None:
        off = 0
        for a, k in self._pieces(addr, len(data)):
            self.uc.mem_write(self.csam.phys(a), data[off:off + k])
            off += k

    def _flush(self, lo: int, hi: int) -> None:
        """Drop Unicorn's translated blocks of linear [lo, hi).  Its removal takes
        a linear address and walks the current tables
        (tests/runtime/test_unicorn_paging_facts.py): only where they map the
        view's physical page is it used; elsewhere the whole cache goes."""
        if not self.csam.paging():
            self.uc.ctl_remove_cache(lo, hi)
            return
        if self._area_mapped(lo, hi):
            self.uc.ctl_remove_cache(lo, hi)
            return
        for a, k in self._pieces(lo, hi - lo):
            if self.csam.live_phys(a) == self.csam.phys(a) and not self.uc.reg_read(X.UC_X86_REG_CR4) & CR4_PAE:
                self._remove_cache_unseen(a, k)
            else:
                self.uc.ctl_flush_tb()
                return

    def _area_mapped(self, lo: int, hi: int) -> bool:
        """Whether [lo, hi) lies in the hypervisor area (the stub cache) and the
        current two-level directory maps the area through the VMM's own entry.
        Then Unicorn's removal walks only the VMM's entries (the slot and the
        area's table, A and D preset: runtime/paging.py `build_table`), which it
        leaves unchanged, to linear = physical: a targeted removal is exact.
        Before, the walk-based check below never held there (the area's table
        is outside guest RAM, so `live_phys` has no answer) and every new stub
        under paging flushed every translated block -- 193 times per 150 M
        instructions of Linux (docs/benchmarks.md, "bt's kernel phase")."""
        if not (self.hyper.contains(lo) and self.hyper.contains(hi - 1)):
            return False
        fast = self.vm.fast
        # The removal's walk is a code fetch at the current CPL: at ring 3 (and
        # in virtual-8086 mode) it would fault on the area's supervisor pages
        # inside Unicorn, where no hook sees the fault: those keep the flush.
        if fast.reg_read(X.UC_X86_REG_CS) & 3 == 3 or fast.reg_read(X.UC_X86_REG_EFLAGS) & VM_BIT:
            return False
        if fast.reg_read(X.UC_X86_REG_CR4) & CR4_PAE:
            return False
        slot = (fast.reg_read(X.UC_X86_REG_CR3) & ~(PAGE - 1) & 0xFFFFFFFF) + (self.hyper.base >> 22) * 4
        if slot + 4 > self.vm.config.mem_bytes:
            return False
        return int.from_bytes(fast.mem_read(slot, 4), "little") == self.hyper_mapping.our_entry()

    def _remove_cache_unseen(self, a: int, k: int) -> None:
        """`ctl_remove_cache` under two-level paging without a trace in guest RAM:
        its walk sets the accessed bits of the PDE and PTE it passes and fills the
        TLB (tests/runtime/test_unicorn_paging_facts.py), where emulate's guest,
        which never touched the page, leaves them clear.  Put back what it set,
        and flush the TLB so the guest's own next access sets them as the CPU would."""
        fast = self.vm.fast
        cr3 = fast.reg_read(X.UC_X86_REG_CR3)
        entries = [(cr3 & ~(PAGE - 1)) + (a >> 22) * 4]
        pde = int.from_bytes(fast.mem_read(entries[0], 4), "little")
        if pde & PTE_P and not (pde & PTE_PS and fast.reg_read(X.UC_X86_REG_CR4) & CR4_PSE):
            entries.append((pde & ~(PAGE - 1)) + ((a >> 12) & 0x3FF) * 4)
        ram = self.vm.config.mem_bytes
        before = [(e, bytes(fast.mem_read(e, 4))) for e in entries if e + 4 <= ram]
        self.uc.ctl_remove_cache(a, a + k)
        changed = False
        for e, raw in before:
            if bytes(fast.mem_read(e, 4)) != raw:
                self.uc.mem_write(e, raw)
                changed = True
        if changed:
            self.stats.add("accessed_bits_restored")
            self.uc.reg_write(X.UC_X86_REG_CR3, cr3)      # TLB flush (the same CR3)

    def guest_visible(self, address: int, size: int) -> bytes:
        """Physical memory as the guest wrote it: patches and guards hidden (the
        tables the read hooks use, kept per physical page), and the directory
        slot the VMM borrows shown with the guest's value.  What the write
        monitor and the fidelity checker read (both by physical address; the
        scanner reads by linear address: runtime/csam.py `linear_visible`)."""
        return self.csam.hidden_bytes(address, super().guest_visible(address, size))

    def guest_read(self, addr: int, size: int) -> bytes:
        """A load the VMM performs for the guest (an emulated instruction's memory
        operand, a guard's branch target) sees what the guest's own load would:
        the guest's bytes under patches (looked up by the physical page the
        load reaches)."""
        return self.csam.unhide(addr, super().guest_read(addr, size))

    # -- boot ---------------------------------------------------------------------
    def boot(self) -> None:
        super().boot()
        self.csam.boot()
        self.uc.mem_write(self.hyper.addr(SELECTOR_VIEW), selector_view_table())
        self.uc.mem_write(self.hyper.addr(FLAG_TABLES), flag_tables())

    # -- patching what CSAM found ----------------------------------------------------
    def _hood(self, addr: int) -> Neighbourhood:
        return policy.neighbourhood(self.cfg, addr, self.patcher.covering)

    def _place_patches(self, sites: list[int], unresolved: list[int]) -> None:
        """CSAM's report after a scan: ask the policy about every new site, then
        guard the new unresolved indirect branches nothing covers."""
        for addr in sites:
            site = policy.insn_at(self.cfg, addr)
            if site is None:
                continue
            d = policy.decide(site, self._hood(addr),
                              eager_privileged=self._scan_patches_privileged)
            if d.action is Action.JUMP:
                self._install_jump(site, d.covered)
            elif d.action is Action.INT3:
                self.patcher.install_int3(site, d.refused)
        for u in unresolved:
            if policy.decide_branch(u, self.patcher.covering).action is Action.GUARD:
                self.csam.guard(u)

    def _install_jump(self, site, covered) -> None:
        patch = self.patcher.install_jump(site, list(covered))
        # Guest instructions copied into the stub still make the guest's accesses:
        # the area's guard must not take them for the stub's (runtime/isolation.py).
        for lo, hi in getattr(patch, "relocated", ()):
            self.isolation.guard.mark(lo, hi, True)

    # -- what CSAM does not scan: real mode and 16-bit code ------------------------------
    # The scanner decodes 32-bit code; 16-bit code scanned as 32-bit gives a
    # wrong CFG and patches at wrong boundaries (seen: kvm-unit-tests
    # realmode.flat triple-faulted after 644 instructions).  So 16-bit code is
    # never scanned or patched: real mode runs in trap's native stretch at real
    # CPL 0 (runtime/realswitch.py; VirtualBox's raw mode fell back to its
    # recompiler there), and a 16-bit code segment in protected mode runs at
    # ring 1 under trap's rules (what faults is emulated; the block check
    # passes 16-bit blocks: runtime/_clock.c `refuse_block`).
    def native_block(self, address: int) -> bool:
        """The block check refused 32-bit protected-mode code at real CPL 0:
        the guest set PE again inside a native stretch.  When CS and SS hold
        protected-mode selectors the stretch ends here (the block is then
        checked and scanned at ring 1, before any patched byte runs at CPL 0);
        before that (the far jump's target, ahead of the guest's SS load) the
        block runs natively, once.  False: not in a stretch, or it just ended."""
        if not self.native.active:
            return False
        if self.native.ready_to_leave():
            # Called inside the slice (runtime/clock.py), where the area's guard
            # refuses the descriptor reads of leave()'s own segment loads.
            g = self.vm.guard
            opened = g.open if g is not None else None
            if g is not None:
                g.open = 1
            try:
                self.native.leave()
            finally:
                if g is not None:
                    g.open = opened
            return False
        self.vm.clock.c.allow_once(address)
        return True

    def _code16(self) -> bool:
        """Is the guest's CS a 16-bit code segment (D clear)?  The CPU's own
        flag when the live state is known (a descriptor lookup cost ~24 us a
        VMM branch)."""
        fast = self.vm.quirks.code16()
        if fast is not None:
            return fast
        return self.code16_selector(self.guest_selector(self.uc.reg_read(X.UC_X86_REG_CS)))

    def code16_selector(self, selector: int) -> bool:
        """Does guest `selector` name a 16-bit code segment (D clear) now?  An
        unreadable or non-code descriptor is not one (a far branch to it faults
        as the CPU's would)."""
        try:
            desc = self.vm.delivery.descriptor(selector)
        except GuestFault:
            return False
        return bool(desc.access & DESC_CODE) and not desc.flags & DESC_FLAG_D

    def on_vmm_branch(self, target: int) -> None:
        # Under paging ring-3 code is never scanned or patched (an emulated
        # iretd to user mode lands here): the stub cache is supervisor-only
        # there, a jump patch would fault.  Without paging the ring-3 target is
        # scanned, so its pushfd/popfd are patched and see the guest's IOPL
        # (tests/runtime/test_emulation_causes.py, patched sites reached from ring 3).
        if self.vm.fast.reg_read(X.UC_X86_REG_CS) & 3 == 3 and self.csam.paging():
            return
        # Real mode (IVT delivery, runtime/realmode.py) and 16-bit code: never
        # scanned (above).  The CS asked is the one the VMM's branch leaves from
        # when it has not loaded the new one yet (runtime/delivery.py asks
        # before): a 32-bit target is then scanned by the block check when it
        # runs; a 16-bit handler reached from 32-bit code would be scanned here
        # (not handled: no guest seen does that).
        if self.native.active or self._code16():
            return
        self.csam.ensure_scanned(target)

    # -- exits ------------------------------------------------------------------------
    def on_fault(self, vector: int, eip: int, error, soft: bool) -> bool:
        handled = self._on_fault(vector, eip, error, soft)
        if self.passage.held is not None:
            # During a ring-3 passage every exit ends the slice: no code may run
            # the lifted bytes before the passage is checked (runtime/ring3pass.py).
            # Seen without this: after an exit the one-instruction slice went
            # on to the next patched site (test_ring3_passage.py, popfd).
            self.vm.halt_slice()
        return handled

    def _on_fault(self, vector: int, eip: int, error, soft: bool) -> bool:
        vm = self.vm
        if self.cache.contains(eip):
            return self._stub_fault(vector, eip, error, soft)
        if in_v86(self.uc):
            # V86 code (runtime/v86.py): never scanned nor patched, its EIP an
            # offset in a paragraph segment; everything it raises is the
            # guest's, reflected by trap's rules for CPL 3 (a #PF's CR2 kept).
            return super().on_fault(vector, eip, error, soft)
        cpl = vm.fast.reg_read(X.UC_X86_REG_CS) & 3
        # The int3 of a patch or guard is the VMM's, at whatever ring reaches it:
        # guest user code on a scanned page runs the same patched bytes (an
        # int3 reflected to the guest from ring 3 looped forever, issue 15).
        if vector == BP and soft and cpl in (1, 3):
            site = (eip - 1) & 0xFFFFFFFF
            if self.csam.is_guard(site):
                return self.csam.guard_exit(site)
            ins = self.passage.emulated_at(site)
            if ins is not None:
                self.stats.add("int3_exits")
                vm.counters.add("faults_emulated", ins.mnemonic)
                return self._emulate_original(ins, resume=None)
            p = self.patcher.at(site)
            if p is not None and p.kind == "int3":
                self.stats.add("int3_exits")
                self.stats.add("faults_after_patching")
                vm.counters.add("faults_emulated", p.covered[0].mnemonic)
                return self._emulate_original(p.covered[0], resume=None)
        insn = None
        if vector == GP and not soft and cpl == 1:
            # Decoded once per exit: the trap path below emulates the same site.
            insn = self.decoder.at(eip)
            if self._patch_on_fault(eip, insn):
                return True
        return super().on_fault(vector, eip, error, soft, insn)

    def _patch_on_fault(self, eip: int, insn) -> bool:
        """Fault-driven patching: the first trap at a scanned patchable site (cli,
        sti, iretd) installs a jump patch when the policy allows it and resumes
        *at the site*, so the stub performs the instruction (and every later
        execution) without another exit.  When the jump is refused the fault is
        emulated as in trap mode (and the site keeps trapping, counted as a fault
        after patching was tried)."""
        if eip in self._patched_fault_sites:
            return False
        if insn is None or not policy.patched_on_fault(insn.row):
            return False
        self._patched_fault_sites.add(eip)
        self.stats.add("faults_before_patching")
        site = policy.insn_at(self.cfg, eip)
        if site is None:
            return False
        d = policy.decide(site, self._hood(eip), at_fault=True)
        if d.action is not Action.JUMP:
            if d.action is Action.TRAP and d.refused is not None:
                self.patcher.count_refusal(d.refused)
            return False
        self._install_jump(site, d.covered)
        self.vm.counters.add("faults_emulated", "patched:" + insn.mnemonic)
        return True

    def after_emulated_fault(self, insn, eip: int) -> None:
        if eip in self._patched_fault_sites:
            self.stats.add("faults_after_patching")

    def _emulate_original(self, ins: PInsn, resume: int | None) -> bool:
        insn = decode(ins.data)
        row = insn.row if insn else None
        if insn is None or not has_routine(row):
            raise GuestFault(UD)
        self.stop_slice = False
        try:
            new_eip = emulate(self, row, insn, ins.addr)
        except GuestFault as f:
            if f.cr2 is not None:
                self.write_cr(2, f.cr2)
            # After a task switch's commit point the fault is the new task's.
            self.vm.deliver_exception(f.vector, ins.addr if f.task_eip is None else f.task_eip, f.error_code)
            return True
        except OutsideRam:
            # The routine touched memory that is not there (the hypervisor
            # area): the run ends at the instruction, as emulate's does.
            self.vm.fast.reg_write(X.UC_X86_REG_EIP, ins.addr)
            raise
        if new_eip is NOT_MINE:
            self.vm.deliver_exception(GP, ins.addr, 0)
            return True
        settle_irq_shadow(self.vm.quirks, row)
        if new_eip is None:
            new_eip = resume if resume is not None else ins.addr + ins.size
            if new_eip != ins.addr + ins.size and self.vm.quirks.irq_inhibited() \
                    and self._is_jump_back(new_eip):
                # An SS load opened a shadow and was the patch's last covered
                # instruction: the shadow is the guest's next instruction's, not
                # the jump back's (a weightless block whose carried shadow would
                # hold the whole next guest block: runtime/_clock.c).
                new_eip = ins.addr + ins.size
        elif not self.cache.contains(new_eip) and not in_v86(self.uc):     # (an iretd into V86: an offset)
            self.on_vmm_branch(new_eip)
            new_eip = self.csam.stub_point(new_eip)
        self.vm.fast.reg_write(X.UC_X86_REG_EIP, new_eip)
        if self.stop_slice or self.vm.stop is not None:
            self.stop_slice = False
            raise StopSlice
        return True

    def _is_jump_back(self, eip: int) -> bool:
        """Is stub point `eip` its patch's jump back to the guest (no covered
        instruction's stub code starts there)?"""
        p = self.patcher.stub_owner(eip)
        return p is not None and p.kind == "jump" and all(lo != eip for lo, _hi, _g in p.stub_map)

    def runs_own_code(self, eip: int) -> bool:
        return self.cache.contains(eip)

    def _stub_fault(self, vector, eip, error, soft) -> bool:
        vm = self.vm
        if vector == PF and not soft and vm.fast.reg_read(X.UC_X86_REG_CS) & 3 == 3 \
                and self.uc.reg_read(X.UC_X86_REG_CR2) == eip:
            # Under paging the stub cache is supervisor-only (runtime/paging.py):
            # ring 3 running a patched kernel page (kvm-unit-tests' umip runs
            # kernel functions at ring 3) jumps into it and faults.  It runs the
            # guest's own bytes instead, as the CPU would (runtime/ring3pass.py).
            p = self.patcher.stub_owner(eip)
            if p is not None and p.kind == "jump":
                self.passage.begin(p, self.patcher.guest_address(eip))
                return True
            raise VMMError(f"ring 3 reached the stub cache at {eip:#x} outside any patch "
                           "under paging, where the stubs are supervisor-only (docs/paging-plan.md)")
        p = self.patcher.stub_owner(eip)
        exit_ = p.exits.get(eip) if p is not None else None
        if vector == GP and exit_ is not None:
            kind, guest, resume = exit_
            self.stats.add("stub_exits")
            vm.counters.add("stub_exits", kind)
            ins = next(i for i in p.covered if i.addr == guest)
            return self._emulate_original(ins, resume)
        if vector == GP and not soft and p is not None:
            # A far jmp/call the stub runs natively (an RPL-0 selector) whose
            # selector names a DPL-0 TSS or task gate: a task switch, which
            # the VMM performs (runtime/taskswitch.py) as trap does.
            guest = self.patcher.guest_address(eip)
            ins = next((i for i in p.covered if i.addr == guest), None)
            row = getattr(decode(ins.data), "row", None) if ins is not None else None
            if row is not None and row.name in ("jmp_far", "call_far") and error \
                    and segments.names_task(self, error):
                self.stats.add("stub_exits")
                vm.counters.add("stub_exits", "task")
                return self._emulate_original(ins, None)
        # A genuine fault raised by relocated guest code (or a segment load's
        # native part): the guest sees its own address.  A selector whose
        # descriptor lies outside RAM ends the run as under emulate, as in trap.
        self.check_table_fault(vector, error, soft)
        guest = self.patcher.guest_address(eip)
        vm.counters.add("faults_reflected", vector)
        vm.deliver_exception(vector, guest if not soft else eip, error, soft)
        return True

    # -- moving the hypervisor area -------------------------------------------------------
    def _relocate_users(self, old: int, new: int) -> None:
        """The area moves (runtime/areamove.py): rewrite every recorded
        fixup (absolute state-page references in stubs, stub->guest branches,
        guest->stub jumps)."""
        self.cache.relocate(new, self._raw_read, self._raw_write)
        self.patcher.relocate(new - old)

    def _after_relocation(self) -> None:
        self.vm.clock.c.set_stub_starts(self.cache.start, self.cache.starts)

    def relocate_hyper(self, new_base: int) -> None:
        super().relocate_hyper(new_base)
        self.stats.add("relocations")

    # -- injection and the guest's view -------------------------------------------------
    def _in_stub(self) -> bool:
        return self.cache.contains(self.vm.fast.reg_read(X.UC_X86_REG_EIP))

    def may_inject(self) -> bool:
        if not super().may_inject():
            return False
        if self.vm.clock.c.shadow_carry():
            return False        # the guest's jmp into a stub was sti's shadow: one more (runtime/_clock.c)
        eip = self.vm.fast.reg_read(X.UC_X86_REG_EIP)
        if not self.cache.contains(eip):
            return True
        # A slice that ends inside a stub ends where one of the guest
        # instructions it translates starts (the clock's weights): there the
        # guest is at that instruction's own address, so the interrupt is taken
        # there, as under emulate, and returns into the covered bytes (the block
        # check leads back to this point of the stub).  Where a template took
        # its scratch register over from the one before (share_scratch), the
        # guest's value of that register is in the state page's scratch word:
        # it goes back into the register first, so the state the handler sees
        # is the guest's; its return re-plans the patch, as any branch to such
        # a point does (runtime/csam.py _into_patch).  Before this, the tick
        # waited for the patch's end (the fuzzer's `timer` feature).
        point = self._guest_point(eip)
        if point is None:
            return False
        guest, held = point
        if held is not None:
            self.uc.reg_write(_GPR[held], self.vcpu.get("scratch"))
            self.stats.add("irq_scratch_restores")
        self.vm.fast.reg_write(X.UC_X86_REG_EIP, guest)
        return True

    def _guest_point(self, eip: int) -> tuple[int, str | None] | None:
        """(guest address, the register held in the scratch word or None) of the
        stub point `eip` where a covered guest instruction's stub code starts."""
        p = self.patcher.stub_owner(eip)
        if p is None or p.kind != "jump":
            return None
        for lo, _hi, guest in p.stub_map:
            if lo == eip:
                return guest, p.shares_scratch.get(guest)
        return None

    def stub_copy(self, address: int) -> int | None:
        """Where the stub runs its copy of the guest instruction at `address`
        when a jump patch covers it after its first (None: it runs at
        `address`, or as a template with no copy of its own)."""
        p = self.patcher.covering(address)
        if p is None or p.kind != "jump" or not p.site < address < p.extent:
            return None
        return next((lo for lo, _hi, guest in p.stub_map if guest == address), None)

    def before_slice(self) -> None:
        self.passage.before_slice()
        super().before_slice()

    def slice_limit(self) -> int | None:
        limit = super().slice_limit()
        if self.passage.held is not None:
            return 1
        if self.vm.pic.has_interrupt() and self._in_stub():
            eip = self.vm.fast.reg_read(X.UC_X86_REG_EIP)
            if self._guest_point(eip) is None and self.guest_eflags() & IF_BIT:
                # Inside a template (a slice's budget ended there): run to the
                # next guest instruction's boundary only, where the interrupt
                # is taken as under emulate (a 0 budget stops before the first
                # block that starts one: runtime/clock.py run).
                return 0
            return min(limit or IN_STUB_SLICE, IN_STUB_SLICE)
        return limit

    def window_watch_here(self) -> bool:
        """May the clock's window check stop at the start of the next slice?
        Not inside a template, where no guest instruction starts: the slice
        would end at once, again and again (slice_limit runs such a slice to
        the next guest boundary instead)."""
        eip = self.vm.fast.reg_read(X.UC_X86_REG_EIP)
        return not self.cache.contains(eip) or self._guest_point(eip) is not None

    # The guest's EFLAGS hold at every CPL in bt: every way into ring 3 (iretd,
    # patched or emulated) goes through the VMM, which writes the frame's
    # EFLAGS, IOPL included, into the real ones (TrapMode.set_guest_eflags).
    tracks_user_flags = True

    def set_guest_eflags(self, value: int) -> None:
        super().set_guest_eflags(value)
        # pushf(d) stubs assume the real IOPL 1 of CPL 1; at CPL 3 the real
        # IOPL is the one written here.  Without paging ring-3 code runs stubs
        # (under paging the stub cache is supervisor-only), so from the first
        # such write of another IOPL on they test the CPL (a native retf to
        # ring 3 keeps the real IOPL 1: nothing to do).
        if not self.patcher.ring3_tests and value & IOPL_MASK != REAL_IOPL_CPL1 \
                and self._real_cpl() == 3 and not self.csam.paging():
            self.patcher.set_ring3_tests()

    def guest_address(self, eip: int) -> int:
        return self.patcher.guest_address(eip) if self.cache.contains(eip) else eip

    def code_at(self, linear: int, n: int) -> bytes | None:
        data = super().code_at(linear, n)
        return self.csam.unhide(linear, data) if data else data

    def guest_regs(self, regs: dict) -> dict:
        regs["eip"] = self.guest_address(regs["eip"])
        return regs

    def extra_report(self) -> dict:
        out = super().extra_report()
        out["patches"] = self.patcher.stats()
        out["csam"] = self.stats.report(read_hidden_pages=self.csam.read_hidden_pages,
                                        guards=len(self.guards),
                                        code_pages=len(self.csam.code_pages),
                                        **self.vm.clock.c.code_stats(),
                                        instructions_scanned=self.cfg.instruction_count())
        return out
