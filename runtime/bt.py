"""`--mode bt`: trap-and-emulate plus binary translation (CSAM + PATM).

On top of `trap` mode:
* Lazy CSAM: guest RAM starts non-executable.  The first fetch from a page
  (UC_HOOK_MEM_FETCH_PROT) scans guest code recursively from that address
  (scanner.Scanner), patches every sensitive-but-unprivileged instruction found,
  and lets the scanned pages execute.  Indirect branches the scanner could not
  resolve get an int3 guard: their first byte traps, the VMM computes the
  target, scans it if it is new, and performs the branch, so code reached only
  through computed pointers never runs unscanned.
* Fault-driven patching: a privileged instruction (cli, sti, iretd) that traps at
  a scanned site is emulated, then patched, so its next execution costs no exit.
* Self-modifying code: pages holding scanned code are write-monitored.  A write
  that touches scanned bytes removes the page's patches (restoring the guest's
  bytes first, then applying its write), drops Unicorn's translated blocks and
  the page's CFG blocks, and makes the page non-executable so its next execution
  rescans it.  A write to a code page that touches no scanned byte just lands.
* Stub exits (a `hlt` in a stub) and faults inside stubs are mapped back to
  guest addresses: nothing the guest or the report sees names a stub address.
"""
from __future__ import annotations

from unicorn import UC_HOOK_MEM_FETCH_PROT, UC_HOOK_MEM_READ
from unicorn import x86_const as X

from bt.hyper_layout import VFLAGS_MASK
from bt.x86 import BP, DESC_PRESENT, GP, LARGE_PAGE, PAGE, SYS_TSS32_AVAILABLE, TSS32_SIZE, UD
from patcher.patches import Patcher
from patcher.stubcache import StubCache
from patcher.templates import Insn as PInsn
from runtime.decode import decode, effective_address
from runtime.delivery import GuestFault
from runtime.emulation import NOT_MINE, ROUTINES
from runtime.modes import StopSlice
from runtime.trap import TrapMode
from scanner.cfg import CFG
from scanner.scan import Scanner

NOT_SCANNED = "unscanned"
CODE = "code"
IN_STUB_SLICE = 64

# Catalog rows whose instructions silently give the host's truth at CPL 1: they are
# patched as soon as the scanner finds them, before they can run.  Privileged
# rows trap on their own and are patched on their first trap (fault-driven);
# segment loads other than SS behave the same in ring 1 and need nothing.
FAULT_PATCHED = frozenset({"cli", "sti", "iretd"})
PATCH_AT_SCAN = frozenset({"pushfd", "popfd", "sgdt", "sidt", "sldt", "str", "smsw",
                           "lar", "lsl", "verr", "verw", "mov_from_cs", "mov_from_ss",
                           "push_cs", "push_ss", "call_far"})   # slice length while EIP is inside patch code (no injection there)


class BTMode(TrapMode):
    name = "bt"

    def __init__(self, vm):
        super().__init__(vm)
        self.cfg = CFG()
        self.scanner = Scanner(self._scan_read, self.cfg)
        self.cache = StubCache(self.uc, self.hyper.base)
        self.patcher = Patcher(self.uc, self.cache, self.vcpu.state_addr,
                               self._raw_read, self._raw_write, self._flush)
        self.guards: dict[int, PInsn] = {}        # int3 guards on indirect branches
        self.code_pages: set[int] = set()
        self.scanned_pages_ever: set[int] = set()
        self.stats = {"pages_scanned": 0, "pages_rescanned": 0, "scans": 0,
                      "faults_before_patching": 0, "faults_after_patching": 0,
                      "stub_exits": 0, "int3_exits": 0, "guard_exits": 0,
                      "code_page_writes": 0, "smc_invalidations": 0}
        self._patched_fault_sites: set[int] = set()
        self.smc_pages: set[int] = set()           # pages the guest wrote code on
        self._read_hooks: dict[int, tuple] = {}
        self._unhidden: list[tuple[int, bytes]] = []
        self._reread: str | None = None
        # Patch cli/sti/iretd found by the scanner right away (PATM did), instead
        # of waiting for their first trap; fault-driven patching covers the rest.
        self._scan_patches_privileged = vm.config.extra.get("eager_privileged_patches", True)
        self.uc.hook_add(UC_HOOK_MEM_FETCH_PROT, vm._guarded(self._on_fetch_prot, False))

    # -- memory helpers -----------------------------------------------------------
    def _raw_read(self, addr: int, n: int) -> bytes:
        return self.vm.mem.fast.mem_read(addr, n)

    def _raw_write(self, addr: int, data: bytes) -> None:
        self.uc.mem_write(addr, data)

    def _flush(self, lo: int, hi: int) -> None:
        self.uc.ctl_remove_cache(lo, hi)

    def _scan_read(self, addr: int, n: int) -> bytes | None:
        """Guest memory as the guest wrote it (patches hidden), RAM only."""
        ram = self.vm.config.mem_bytes
        if addr < 0 or addr >= ram:
            return None
        n = min(n, ram - addr)
        return self.patcher.original_bytes(addr, bytes(self.uc.mem_read(addr, n)))

    # -- boot ---------------------------------------------------------------------
    def boot(self) -> None:
        super().boot()
        self.protect.block_exec_range(0, self.vm.config.mem_bytes, NOT_SCANNED)
        # The guest may run stubs but never write them: a store there is an
        # isolation violation (VM.on_protected_write ends the run cleanly).
        self.hyper.protect_stubs(writable=False)
        from bt.hyper_layout import SELECTOR_VIEW, selector_view_table
        self.uc.mem_write(self.hyper.addr(SELECTOR_VIEW), selector_view_table())

    # -- lazy CSAM ------------------------------------------------------------------
    def _on_fetch_prot(self, access, address, size, value):
        """First execution in a non-executable page: scan from there.  The page's
        new protection is committed between slices (runtime/protect.py), so the
        fetch is refused now and retried by the next slice."""
        if address >= self.vm.config.mem_bytes:
            return False
        self.vm.counters.add("scan_exits")
        self.vm.exit_site(address)
        self.scan_and_patch(address)
        page = address & ~(PAGE - 1)
        if self.protect.exec_blocked(page):        # nothing scanned there (bad bytes)
            self.protect.block_exec(page, NOT_SCANNED, False)
        self._fetch_retry = True
        self.vm._halt_slice()
        return False

    def claims_error(self, err) -> bool:
        if getattr(self, "_fetch_retry", False):
            self._fetch_retry = False
            return True
        return False

    def scan_and_patch(self, addr: int) -> None:
        before = set(self.cfg.pages.code_pages())
        known_unresolved = set(self.cfg.unresolved_sites())
        self.scanner.scan_from(addr)
        self.stats["scans"] += 1
        pages = set(self.cfg.pages.code_pages())
        for page in pages - before:
            self.stats["pages_scanned"] += 1
            if page in self.scanned_pages_ever:
                self.stats["pages_rescanned"] += 1
            self.scanned_pages_ever.add(page)
        # In address order, so a patch starting at `cli` absorbs the `pushfd`
        # after it instead of colliding with it.
        # The sites this scan decoded are the new ones (each byte is decoded
        # once): no walk over the whole CFG per lazy scan.
        for addr, _name, _klass in sorted(self.scanner.new_sites):
            site = self.cfg.site_at(addr)
            if site is None or self.patcher.covering(site.addr):
                continue
            if site.name in PATCH_AT_SCAN:
                self._patch_site(site.addr)
            elif site.name == "iretd":
                # iretd to ring 3 does not trap: it must never run natively.
                self._patch_site(site.addr)
            elif site.name in FAULT_PATCHED and self._scan_patches_privileged:
                self._patch_site(site.addr, int3_fallback=False)
        for u in self.cfg.unresolved_sites():
            if u not in known_unresolved and u not in self.guards and self.patcher.covering(u) is None:
                self._guard(u)
        for page in pages:
            if page not in self.code_pages:
                self.code_pages.add(page)
                self.protect.watch_writes(page, CODE, True)
            self.protect.block_exec(page, NOT_SCANNED, False)

    # -- hiding patches from a guest that reads its own code ------------------------------
    # Unicorn does not enforce read protection on executable pages, so reads cannot
    # be trapped by protection.  On pages where the guest has already treated its
    # code as data (a self-modifying-code write), a read hook limited to that page
    # catches loads that touch a patch.  Stopping inside a read hook aborts the
    # load (Unicorn restarts the instruction), which is used on purpose:
    #   1. the hook puts the original bytes back and ends the slice;
    #   2. the instruction runs again, alone (a one-instruction slice), and reads
    #      the guest's own bytes;
    #   3. before the next slice the patch bytes return.
    # Other pages get no hook: a read hook costs every load 20-40% in Unicorn
    # (measured), so it is only paid where a guest is known to read its code.
    def _install_read_hooks(self) -> None:
        for page in self.smc_pages:
            if page not in self._read_hooks and self.patcher._by_page.get(page):
                self._read_hooks[page] = self.uc.hook_add(
                    UC_HOOK_MEM_READ, self.vm._guarded(self._before_read), None,
                    page, page + PAGE - 1)
                self.stats["read_hidden_pages"] = len(self._read_hooks)

    def _before_read(self, access, address, size, value):
        if self._reread == "retrying":
            return                                   # step 2: let the load see them
        hits = [p for p in self._patches_near(address)
                if p.span[0] < address + size and address < p.span[1]]
        if not hits:
            return
        for p in hits:                               # step 1
            lo, hi = p.span
            self._unhidden.append((lo, self._raw_read(lo, hi - lo)))
            self._raw_write(lo, p.orig)
        self.stats["hidden_reads"] = self.stats.get("hidden_reads", 0) + 1
        self._reread = "retry"
        self.vm._halt_slice(abort=True)

    def _rehide(self) -> None:
        while self._unhidden:                        # step 3
            lo, patched = self._unhidden.pop()
            self._raw_write(lo, patched)

    def on_vmm_branch(self, target: int) -> None:
        # Interrupt handlers and other VMM-chosen targets can sit in pages that
        # are already executable (scanned for other code): scan them explicitly.
        if self.cfg.block_of(target) is None and 0 <= target < self.vm.config.mem_bytes:
            self.scan_and_patch(target)

    def _insn_at(self, addr: int) -> PInsn | None:
        b = self.cfg.block_of(addr)
        if b is None:
            return None
        insns = self.cfg.graph.nodes[b]["insns"]
        a, size, mnem, op, data = insns[insns.index_of(addr)]
        return PInsn(a, size, mnem, op, bytes(data))

    def _following(self, addr: int, count: int = 6) -> list[PInsn]:
        out = []
        b = self.cfg.block_of(addr)
        cur = addr
        while b is not None and len(out) < count:
            insns = self.cfg.graph.nodes[b]["insns"]
            for a, size, mnem, op, data in insns:
                if a > addr and a >= cur:
                    out.append(PInsn(a, size, mnem, op, bytes(data)))
                    cur = a + size
            last = insns[-1]
            nxt = last[0] + last[1]
            b = self.cfg.block_of(nxt)
            if b is not None and b != nxt:
                break
        return out[:count]

    def _patch_site(self, addr: int, int3_fallback: bool = True):
        site = self._insn_at(addr)
        if site is None:
            return None
        targets = lambda lo, hi: bool(self.cfg.branch_targets_in(lo, hi))
        if not int3_fallback:
            # A privileged site traps by itself: patch only if a jump fits,
            # otherwise leave it to trap (an int3 would cost the same exit).
            _, why = self.patcher.plan(site, self._following(addr), targets)
            if why is not None:
                return None
        return self.patcher.install(site, self._following(addr), targets)

    def _guard(self, addr: int) -> None:
        site = self._insn_at(addr)
        if site is None:
            return
        self.guards[addr] = site
        self.uc.mem_write(addr, b"\xcc")
        self._flush(addr, addr + 1)
        self.vm.counters.add("guards_installed")

    # -- self-modifying code ----------------------------------------------------------
    def guest_visible(self, address: int, size: int) -> bytes:
        return self.patcher.original_bytes(address, self._raw_read(address, size))

    def before_watched_write(self, page: int, address: int, size: int) -> bool:
        """Called before the guest's write lands. True = the slice must stop."""
        if page not in self.code_pages:
            return False
        self.stats["code_page_writes"] += 1
        if not self._touches_code(address, size):
            return False
        self._invalidate(page)
        if address + size > page + PAGE:
            self._invalidate(page + PAGE)
        return True

    def _touches_code(self, address: int, size: int) -> bool:
        for a in range(address, address + size):
            if self.cfg.pages.state(a):
                return True
            if any(p.site <= a < p.site + len(p.orig) for p in self._patches_near(a)):
                return True
            if a in self.guards:
                return True
        return False

    def _patches_near(self, a: int):
        for site in self.patcher._by_page.get(a & ~(PAGE - 1), ()):
            p = self.patcher.at(site)
            if p is not None:
                yield p

    def _invalidate(self, page: int) -> None:
        if page not in self.code_pages:
            return
        self.stats["smc_invalidations"] += 1
        self.smc_pages.add(page)
        self.patcher.remove_page(page)
        for g in [g for g in self.guards if g & ~(PAGE - 1) == page]:
            self.uc.mem_write(g, self.guards.pop(g).data[:1])
        self.scanner.invalidate_page(page)
        self.cfg.pages.drop(page)
        self._flush(page, page + PAGE)
        self.code_pages.discard(page)
        self.protect.watch_writes(page, CODE, False)
        self.protect.block_exec(page, NOT_SCANNED, True)

    # -- exits ------------------------------------------------------------------------
    def on_fault(self, vector: int, eip: int, error, soft: bool) -> bool:
        vm = self.vm
        if self.cache.contains(eip):
            return self._stub_fault(vector, eip, error, soft)
        cpl = vm.fast.reg_read(X.UC_X86_REG_CS) & 3
        if vector == BP and soft and cpl == 1:
            site = (eip - 1) & 0xFFFFFFFF
            if site in self.guards:
                return self._guard_exit(site)
            p = self.patcher.at(site)
            if p is not None and p.kind == "int3":
                self.stats["int3_exits"] += 1
                self.stats["faults_after_patching"] += 1
                vm.counters.add("faults_emulated", p.covered[0].mnemonic)
                return self._emulate_original(p.covered[0], resume=None)
        if vector == GP and not soft and cpl == 1 and self._patch_on_fault(eip):
            return True
        return super().on_fault(vector, eip, error, soft)

    def _patch_on_fault(self, eip: int) -> bool:
        """Fault-driven patching: the first trap at a scanned cli/sti/iretd site
        installs a jump patch and resumes *at the site*, so the stub performs the
        instruction (and every later execution) without another exit.  When the
        jump is refused the fault is emulated as in trap mode (and the site keeps
        trapping, counted as a fault after patching was tried)."""
        if eip in self._patched_fault_sites:
            return False
        insn = self.decoder.at(eip)
        if insn is None or insn.mnemonic not in FAULT_PATCHED:
            return False
        self._patched_fault_sites.add(eip)
        self.stats["faults_before_patching"] += 1
        if self._insn_at(eip) is None or self.patcher.covering(eip):
            return False
        site = self._insn_at(eip)
        targets = lambda lo, hi: bool(self.cfg.branch_targets_in(lo, hi))
        covered, why = self.patcher.plan(site, self._following(eip), targets)
        if why is not None:
            self.patcher.refused[why.value] = self.patcher.refused.get(why.value, 0) + 1
            return False
        if self.patcher.install(site, self._following(eip), targets) is None:
            return False
        self.vm.counters.add("faults_emulated", "patched:" + insn.mnemonic)
        return True

    def after_emulated_fault(self, insn, eip: int) -> None:
        if eip in self._patched_fault_sites:
            self.stats["faults_after_patching"] += 1

    def _emulate_original(self, ins: PInsn, resume: int | None) -> bool:
        insn = decode(ins.data)
        routine = ROUTINES.get(insn.mnemonic) if insn else None
        if routine is None:
            raise GuestFault(UD)
        self.stop_slice = False
        try:
            new_eip = routine(self, insn, ins.addr)
        except GuestFault as f:
            if f.cr2 is not None:
                self.write_cr(2, f.cr2)
            self.vm.deliver_exception(f.vector, ins.addr, f.error_code)
            return True
        if new_eip is NOT_MINE:
            self.vm.deliver_exception(GP, ins.addr, 0)
            return True
        if new_eip is None:
            new_eip = resume if resume is not None else ins.addr + ins.size
        elif not self.cache.contains(new_eip):
            self.on_vmm_branch(new_eip)
        self.vm.fast.reg_write(X.UC_X86_REG_EIP, new_eip)
        if self.stop_slice or self.vm.stop is not None:
            self.stop_slice = False
            raise StopSlice
        return True

    def _stub_fault(self, vector, eip, error, soft) -> bool:
        vm = self.vm
        p = self.patcher.stub_owner(eip)
        exit_ = p.exits.get(eip) if p is not None else None
        if vector == GP and exit_ is not None:
            kind, guest, resume = exit_
            self.stats["stub_exits"] += 1
            vm.counters.add("stub_exits", kind)
            if kind == "window":
                vm.fast.reg_write(X.UC_X86_REG_EIP, resume)
                raise StopSlice
            ins = next(i for i in p.covered if i.addr == guest)
            return self._emulate_original(ins, resume)
        # A genuine fault raised by relocated guest code: the guest sees its own address.
        guest = self.patcher.guest_address(eip)
        vm.counters.add("faults_reflected", vector)
        vm.deliver_exception(vector, guest if not soft else eip, error, soft)
        return True

    def _guard_exit(self, site: int) -> bool:
        """An indirect branch: find the target, scan it if new, perform the branch."""
        vm = self.vm
        self.stats["guard_exits"] += 1
        ins = self.guards[site]
        insn = decode(ins.data)
        op = insn.operands[0]
        if op.kind == "reg":
            target = self.uc.reg_read(op.reg)
        else:
            addr = effective_address(self.uc, op, self.seg_base)
            target = int.from_bytes(self.guest_read(addr, 4), "little")
        if self.cfg.block_of(target) is None and target < vm.config.mem_bytes:
            self.scan_and_patch(target)
        if insn.mnemonic == "call":
            from runtime.emulation import _push
            _push(self, site + ins.size, 4)
        vm.fast.reg_write(X.UC_X86_REG_EIP, target)
        return True

    # -- moving the hypervisor area -------------------------------------------------------
    def relocate_hyper(self, new_base: int) -> None:
        """Move the hypervisor area (between slices), e.g. when a paging guest
        claims its addresses: copy it, rewrite every recorded fixup (absolute
        state-page references in stubs, stub->guest branches, guest->stub jumps),
        and repoint the real descriptor-table registers and the virtual CPU."""
        from bt.hyper_layout import HYPER_SIZE, SHADOW_GDT, SHADOW_IDT, VMM_TSS
        uc, old = self.uc, self.hyper.base
        if new_base & (LARGE_PAGE - 1) or new_base < self.vm.config.mem_bytes:
            raise ValueError(f"bad hypervisor base {new_base:#x}")
        contents = bytes(uc.mem_read(old, HYPER_SIZE))
        old_mem = self.hyper._mem                  # keep the old mapping alive until unmapped
        self.hyper.map_at(new_base)
        uc.mem_write(new_base, contents)
        self.cache.relocate(new_base, self._raw_read, self._raw_write)
        for p in self.patcher.patches.values():
            delta = new_base - old
            if p.stub:
                p.stub += delta
                p.exits = {a + delta: e for a, e in p.exits.items()}
                p.stub_map = [(lo + delta, hi + delta, g) for lo, hi, g in p.stub_map]
            if p.kind == "jump":
                self._flush(p.site, p.site + 5)
        self.patcher.stubs_moved()
        _, _, glimit, _ = uc.reg_read(X.UC_X86_REG_GDTR)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, new_base + SHADOW_GDT, glimit, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, new_base + SHADOW_IDT, 0x7FF, 0))
        uc.reg_write(X.UC_X86_REG_TR, (0, new_base + VMM_TSS, TSS32_SIZE - 1,
                                           (DESC_PRESENT | SYS_TSS32_AVAILABLE) << 8))
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        if old <= eip < old + HYPER_SIZE:          # stopped inside a stub: follow it
            uc.reg_write(X.UC_X86_REG_EIP, eip - old + new_base)
        uc.mem_unmap(old, HYPER_SIZE)
        self.hyper.base = new_base
        self.vm.refresh_clock_memory()             # before the old host memory goes
        self.vcpu.state_addr = new_base
        self.vcpu.rebind(self.hyper.host)
        del old_mem
        self.patcher.state_addr = new_base
        self.hyper.protect_stubs(writable=False)
        self.stats["relocations"] = self.stats.get("relocations", 0) + 1

    # -- injection and the guest's view -------------------------------------------------
    def _in_stub(self) -> bool:
        return self.cache.contains(self.vm.fast.reg_read(X.UC_X86_REG_EIP))

    def may_inject(self) -> bool:
        return super().may_inject() and not self._in_stub()

    def before_slice(self) -> None:
        super().before_slice()
        if self._reread == "retry":
            self._reread = "retrying"
        elif self._reread == "retrying":
            self._rehide()
            self._reread = None
        self._install_read_hooks()

    def slice_limit(self) -> int | None:
        if self._reread == "retry":
            return 1
        limit = super().slice_limit()
        pending = 1 if self.vm.pic.has_interrupt() else 0
        self.vcpu.set("irq_pending", pending)
        in_stub = self._in_stub()
        self.vcpu.set("in_patch", 1 if in_stub else 0)
        if in_stub and pending:
            return min(limit or IN_STUB_SLICE, IN_STUB_SLICE)
        return limit

    def on_irq_state(self) -> None:
        self.vcpu.set("irq_pending", 1 if self.vm.pic.has_interrupt() else 0)

    # The virtual IF/IOPL hold at every CPL in bt: every way into ring 3 (iretd,
    # patched or emulated) sets them from the frame.
    tracks_user_flags = True

    def guest_eflags(self) -> int:
        real = self.uc.reg_read(X.UC_X86_REG_EFLAGS)
        return (real & ~VFLAGS_MASK) | self.vcpu.vflags

    def set_guest_eflags(self, value: int) -> None:
        self.vcpu.vflags = value & VFLAGS_MASK
        self._write_real_flags(value)

    def guest_address(self, eip: int) -> int:
        return self.patcher.guest_address(eip) if self.cache.contains(eip) else eip

    def guest_regs(self, regs: dict) -> dict:
        regs["eip"] = self.guest_address(regs["eip"])
        return regs

    def extra_report(self) -> dict:
        out = super().extra_report()
        out["patches"] = self.patcher.stats()
        out["csam"] = {**self.stats, "guards": len(self.guards),
                       "code_pages": len(self.code_pages),
                       "instructions_scanned": self.cfg.instruction_count()}
        return out
