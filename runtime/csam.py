"""CSAM for bt mode: code is scanned before it runs, and rescanned when it changes.

* Lazy scanning: guest RAM starts non-executable.  The first fetch from a page
  (UC_HOOK_MEM_FETCH_PROT) scans guest code recursively from that address
  (scanner.Scanner) and lets the scanned pages execute; VMM-chosen targets
  (interrupt handlers, emulated far transfers) are scanned when the VMM sends
  the guest there (`ensure_scanned`).  After each scan the owner is told which
  sites and unresolved indirect branches are new (`on_new_code`): what to patch
  is the patch policy's decision, not CSAM's.
* int3 guards on indirect branches the scanner could not resolve: their first
  byte traps, `guard_exit` computes the target, scans it if it is new, and
  performs the branch, so code reached only through computed pointers never
  runs unscanned.
* Self-modifying code: pages holding scanned code are write-monitored.  A write
  that touches scanned bytes, a patch or a guard removes the page's patches and
  guards (restoring the guest's bytes first), drops Unicorn's translated blocks
  and the page's CFG blocks, and makes the page non-executable so its next
  execution rescans it.  A write that touches no scanned byte just lands.
* Guest reads of patched code on pages the guest wrote code on are answered
  with the guest's own bytes (read hooks, see `_install_read_hooks`).
"""
from __future__ import annotations

from unicorn import UC_HOOK_MEM_FETCH_PROT, UC_HOOK_MEM_READ
from unicorn import x86_const as X

from bt.x86 import PAGE
from patcher.policy import insn_at
from patcher.templates import Insn
from runtime.decode import decode, effective_address
from runtime.emulation import push
from scanner.cfg import CFG
from scanner.scan import Scanner

NOT_SCANNED = "unscanned"
CODE = "code"


class CSAM:
    """Scanning, guards and self-modifying-code handling for one bt-mode VM.

    `mode` provides the engine, the protections and the guest's view of memory
    (`guest_visible`); `patcher` is asked which patches lie on a page and removes
    them; `stats` is bt mode's declared counter set (runtime/counters.py
    CSAM_STATS); `on_new_code(sites, unresolved)` is called after every scan with
    the new sensitive-site addresses (in address order) and the new unresolved
    indirect branches."""

    def __init__(self, mode, patcher, stats, on_new_code):
        self.mode = mode
        self.vm = mode.vm
        self.uc = mode.uc
        self.patcher = patcher
        self.stats = stats
        self._on_new_code = on_new_code
        self.cfg = CFG()
        self.scanner = Scanner(self._scan_read, self.cfg)
        self.guards: dict[int, Insn] = {}
        self.code_pages: set[int] = set()
        self._scanned_pages_ever: set[int] = set()
        self._smc_pages: set[int] = set()           # pages the guest wrote code on
        self._read_hooks: dict[int, int] = {}
        self._unhidden: list[tuple[int, bytes]] = []
        self._reread: str | None = None
        self._fetch_retry = False
        self.uc.hook_add(UC_HOOK_MEM_FETCH_PROT, self.vm.guarded(self._on_fetch_prot, False))

    @property
    def read_hidden_pages(self) -> int:
        return len(self._read_hooks)

    def boot(self) -> None:
        self.mode.protect.block_exec_range(0, self.vm.config.mem_bytes, NOT_SCANNED)

    def _scan_read(self, addr: int, n: int) -> bytes | None:
        ram = self.vm.config.mem_bytes
        if addr < 0 or addr >= ram:
            return None
        return self.mode.guest_visible(addr, min(n, ram - addr))

    # -- lazy scanning ------------------------------------------------------------------
    def _on_fetch_prot(self, access, address, size, value):
        """First execution in a non-executable page: scan from there.  The page's
        new protection is committed between slices (runtime/protect.py), so the
        fetch is refused now and retried by the next slice."""
        if address >= self.vm.config.mem_bytes:
            return False
        self.vm.counters.add("scan_exits")
        self.vm.exit_site(address)
        self.scan(address)
        page = address & ~(PAGE - 1)
        if self.mode.protect.exec_blocked(page):       # nothing scanned there (bad bytes)
            self.mode.protect.block_exec(page, NOT_SCANNED, False)
        self._fetch_retry = True
        self.vm.halt_slice()
        return False

    def claims_fetch_retry(self) -> bool:
        """Whether the error that ended the slice was a refused fetch of a page
        just scanned (the mode's own doing)."""
        if self._fetch_retry:
            self._fetch_retry = False
            return True
        return False

    def scan(self, addr: int) -> None:
        cfg, protect = self.cfg, self.mode.protect
        before = set(cfg.pages.code_pages())
        known_unresolved = set(cfg.unresolved_sites())
        self.scanner.scan_from(addr)
        self.stats.add("scans")
        pages = set(cfg.pages.code_pages())
        for page in pages - before:
            self.stats.add("pages_scanned")
            if page in self._scanned_pages_ever:
                self.stats.add("pages_rescanned")
            self._scanned_pages_ever.add(page)
        # The sites this scan decoded are the new ones (each byte is decoded
        # once): no walk over the whole CFG per lazy scan.  In address order, so
        # a patch starting at `cli` absorbs the `pushfd` after it.
        sites = [a for a, _name, _klass in sorted(self.scanner.new_sites)]
        unresolved = [u for u in cfg.unresolved_sites() if u not in known_unresolved]
        self._on_new_code(sites, unresolved)
        for page in pages:
            if page not in self.code_pages:
                self.code_pages.add(page)
                protect.watch_writes(page, CODE, True)
            protect.block_exec(page, NOT_SCANNED, False)

    def ensure_scanned(self, target: int) -> None:
        """The VMM sends the guest to `target`: interrupt handlers and other
        VMM-chosen targets can sit in pages that are already executable (scanned
        for other code), so scan them explicitly."""
        if self.cfg.block_of(target) is None and 0 <= target < self.vm.config.mem_bytes:
            self.scan(target)

    # -- int3 guards on unresolved indirect branches --------------------------------------
    def guard(self, addr: int) -> None:
        site = insn_at(self.cfg, addr)
        if site is None or addr in self.guards:
            return
        self.guards[addr] = site
        self.uc.mem_write(addr, b"\xcc")
        self.uc.ctl_remove_cache(addr, addr + 1)
        self.vm.counters.add("guards_installed")

    def is_guard(self, addr: int) -> bool:
        return addr in self.guards

    def guard_exit(self, site: int) -> bool:
        """An indirect branch: find the target, scan it if new, perform the branch."""
        self.stats.add("guard_exits")
        ins = self.guards[site]
        insn = decode(ins.data)
        op = insn.operands[0]
        if op.kind == "reg":
            target = self.uc.reg_read(op.reg)
        else:
            addr = effective_address(self.uc, op, self.mode.seg_base)
            target = int.from_bytes(self.mode.guest_read(addr, 4), "little")
        if self.cfg.block_of(target) is None and target < self.vm.config.mem_bytes:
            self.scan(target)
        if insn.mnemonic == "call":
            push(self.mode, site + ins.size, 4)
        self.vm.fast.reg_write(X.UC_X86_REG_EIP, target)
        return True

    # -- self-modifying code ----------------------------------------------------------------
    def before_watched_write(self, page: int, address: int, size: int) -> bool:
        """Called before the guest's write lands. True = the slice must stop."""
        if page not in self.code_pages:
            return False
        self.stats.add("code_page_writes")
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
            if any(p.site <= a < p.site + len(p.orig)
                   for p in self.patcher.patches_on_page(a & ~(PAGE - 1))):
                return True
            if a in self.guards:
                return True
        return False

    def _invalidate(self, page: int) -> None:
        if page not in self.code_pages:
            return
        self.stats.add("smc_invalidations")
        self._smc_pages.add(page)
        self.patcher.remove_page(page)
        for g in [g for g in self.guards if g & ~(PAGE - 1) == page]:
            self.uc.mem_write(g, self.guards.pop(g).data[:1])
        self.scanner.invalidate_page(page)
        self.cfg.pages.drop(page)
        self.uc.ctl_remove_cache(page, page + PAGE)
        self.code_pages.discard(page)
        self.mode.protect.watch_writes(page, CODE, False)
        self.mode.protect.block_exec(page, NOT_SCANNED, True)

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
    def before_slice(self) -> None:
        if self._reread == "retry":
            self._reread = "retrying"
        elif self._reread == "retrying":
            self._rehide()
            self._reread = None
        self._install_read_hooks()

    def rereading(self) -> bool:
        """The next slice must run one instruction (step 2 above)."""
        return self._reread == "retry"

    def _install_read_hooks(self) -> None:
        for page in self._smc_pages:
            if page not in self._read_hooks and self.patcher.patches_on_page(page):
                self._read_hooks[page] = self.uc.hook_add(
                    UC_HOOK_MEM_READ, self.vm.guarded(self._before_read), None,
                    page, page + PAGE - 1)

    def _before_read(self, access, address, size, value):
        if self._reread == "retrying":
            return                                   # step 2: let the load see them
        hits = [p for p in self.patcher.patches_on_page(address & ~(PAGE - 1))
                if p.span[0] < address + size and address < p.span[1]]
        if not hits:
            return
        for p in hits:                               # step 1
            lo, hi = p.span
            self._unhidden.append((lo, bytes(self.uc.mem_read(lo, hi - lo))))
            self.uc.mem_write(lo, p.orig)
        self.stats.add("hidden_reads")
        self._reread = "retry"
        self.vm.halt_slice(abort=True)

    def _rehide(self) -> None:
        while self._unhidden:                        # step 3
            lo, patched = self._unhidden.pop()
            self.uc.mem_write(lo, patched)
