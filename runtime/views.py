"""CSAM's views under paging (the part of runtime/csam.py that maps scans of
linear pages onto physical pages; `Views` is a base of `CSAM`, using its
engine, CFG, scanner, patcher and clock).

Paging: the CFG, the patches and the guards are keyed by *linear* address (the
scanner follows branches, a jump patch's `jmp rel32` and a stub's way back
are linear); what the C side keeps per page (flags, dirty, patch interior,
hidden bytes) and the write and read hooks are keyed by *physical* page
(hooks see physical addresses: tests/runtime/test_unicorn_paging_facts.py).
The link is a view: each physical page holds the scan of one linear page at a
time (`frame_of` / `view_of`, published to C with `set_view`).  The block
check translates the block's linear address and knows the start only when the
physical page's view is that linear page, so
* a CR3 switch that puts other code at a scanned linear address is refused
  (the physical page there has no view, or another one): the old view goes
  (its patches out of the old physical page) and the new code is scanned;
* code entered through another alias of a scanned physical page is refused:
  the old alias's view goes (patches restored) before the new alias is scanned.
  Patches therefore only ever exist for the alias that runs, and a jump
  patch's `jmp rel32`, planned for that linear address, is never run from
  another one (the alias question of docs/paging-plan.md, answered by moving
  the view rather than by alias-free patch forms: no patch template changes).
  The old alias's scan is *parked*, not dropped: it stays in the CFG,
  unpublished, with a copy of the page's bytes; when that alias returns and the
  page's scanned bytes are unchanged (`_still_valid`) it serves again and only
  its patches are re-planned (`view_reuses`), so a kernel alternating between
  two aliases scans each once, not at every alternation.  At most MAX_PARKED
  are kept (Linux leaves its identity alias for good), and a parked scan found
  stale is forgotten only outside the scanner's walk (`_settle`).
* Writes through any alias hit the physical page's flags (dirty).
VMM accesses to patched code (`_raw`, bt's `_raw_read`/`_raw_write`) go
through the view's frame, never through the current CR3, so removing a view's
patches after a CR3 switch writes the right physical bytes; Unicorn's
block-cache removal takes a *linear* address
(tests/runtime/test_unicorn_paging_facts.py), so it is used only where the
current tables map the view, else the whole cache is flushed.
"""
from __future__ import annotations

from unicorn import x86_const as X

from bt.x86 import CR0_PG, PAGE
from runtime.memory import AreaInUse, PageFault

FLAGS = 0           # clock.set_page table: the scanner's instruction-start flags
MAX_PARKED = 64     # parked alias scans kept (`_settle`): 64 x 4 KiB copies


class Views:
    def paging(self) -> bool:
        return bool(self.vm.fast.reg_read(X.UC_X86_REG_CR0) & CR0_PG)

    def live_phys(self, addr: int) -> int | None:
        """`addr` through the current page tables (a kernel read), None when the
        walk fails (or meets the hypervisor area's entry where the guest's own
        maps `addr`: runtime/memory.py AreaInUse; the guest's fetch there is
        the guard's to see)."""
        try:
            return self.vm.mem.translate(addr)
        except (PageFault, AreaInUse):
            return None

    def phys(self, addr: int) -> int:
        """Where the VMM reads and writes code at linear `addr`: the physical page
        of its view when it has one, else through the current tables (stubs and
        the area: linear = physical)."""
        f = self.frame_of.get(addr & ~(PAGE - 1))
        if f is not None:
            return f | (addr & (PAGE - 1))
        p = self.live_phys(addr)
        return addr if p is None else p

    def claim_view(self, page: int) -> int | None:
        """Make linear `page` the view of the RAM page it maps to now; the
        physical page, or None (not mapped, not RAM)."""
        f = self.live_phys(page)
        if f is None or f >= self.vm.config.mem_bytes:
            return None
        if self.frame_of.get(page) == f:
            return f
        self.drain_writes()
        if page in self.frame_of:
            self._drop_view(page)              # the page maps other memory now
        parked = self._parked.get(page)
        if parked is not None and not self._still_valid(page, f, *parked):
            if self._walking:
                # Forgetting changes the CFG under the scanner's walk: the read
                # fails instead (a bad node on the page, dropped with the rest
                # of its scan after the walk; `scan`).
                self._stale.add(page)
                return None
            self._forget(page)
            parked = None
        self._parked.pop(page, None)
        other = self.view_of.get(f)
        if other is not None:
            self._drop_view(other, park=True)  # the memory is entered through another alias
        self.frame_of[page] = f
        self.view_of[f] = page
        self.clock.c.set_view(f, page)
        if parked is not None:
            self._resume(page, f, parked[1])
        return f

    def _drop_view(self, page: int, park: bool = False) -> None:
        """Linear `page` stops being its physical page's view: its patches and
        guards come out of the page (all bytes still the VMM's: no guest write
        pending).  Its scan is forgotten, or, when another alias takes the page
        over (`park`), kept in the CFG unpublished with a copy of the page's
        bytes, for the alias's return (`_resume`)."""
        self.stats.add("view_moves")
        f = self.frame_of[page]
        self._invalidate(page, [], guest_wrote=False, keep_scan=park)
        if park and page in self.cfg.pages.pages:       # (a page only read holds no scan)
            self._parked[page] = (f, self._raw(page, PAGE))
        self.frame_of.pop(page)
        self.view_of.pop(f, None)
        self.clock.c.set_view(f, None)

    def _still_valid(self, page: int, f: int, frame: int, snapshot: bytes) -> bool:
        """A parked scan serves again when its linear page maps the same physical
        page, whose scanned bytes are those it was scanned from (compared, as
        the guest sees them, with the copy taken when it was parked: a store
        nobody saw while the page was another alias's shows here; stores to the
        page's other bytes, data next to code, do not matter, as for the write
        hook), and no block of it runs on into a page that is not a view (whose
        bytes the comparison does not cover).  Else it is scanned anew."""
        rec = self.cfg.pages.pages.get(page)
        if frame != f or rec is None:
            return False
        now = self.hidden_bytes(f, bytes(self.vm.fast.mem_read(f, PAGE)))
        if now != snapshot and any(x and a != b for x, a, b in zip(rec.flags, now, snapshot)):
            return False
        crosses = any(self.cfg.graph._node[n].get("end", 0) > page + PAGE
                      for n in self.scanner.nodes_on_page(page))
        return not crosses or page + PAGE in self.frame_of

    def _resume(self, page: int, f: int, snapshot: bytes) -> None:
        """An alias returns to its physical page with its parked scan still
        valid (`_still_valid`): publish it and have its sites re-planned."""
        self.stats.add("view_reuses")
        self._published.add(page)
        self.code_pages.add(f)
        self.clock.c.set_page(FLAGS, f, self.cfg.pages.pages[page].flags)
        self.mode._flush(page, page + PAGE)
        self._replan.append(page)

    def _forget(self, page: int) -> None:
        """Drop a parked scan from the CFG."""
        self.scanner.invalidate_page(page)
        self.cfg.pages.drop(page)

    def _settle(self) -> None:
        """Outside the scanner's walk: forget the parked scans found stale
        during it and the oldest beyond MAX_PARKED (Linux leaves its identity
        alias for good: 1,483 pages), and re-plan the resumed ones."""
        while self._stale:
            page = self._stale.pop()
            if self._parked.pop(page, None) is not None:
                self._forget(page)
        while len(self._parked) > MAX_PARKED:
            oldest = next(iter(self._parked))
            del self._parked[oldest]
            self._forget(oldest)
        self._replan_resumed()

    def _replan_resumed(self) -> None:
        """Ask the owner to patch the sites and guard the branches of resumed
        views (as after a scan; outside the scanner's walk, whose reads resume
        views: patching must not run inside it)."""
        while self._replan:
            page = self._replan.pop(0)
            if self.frame_of.get(page) is None:
                continue
            node = self.cfg.graph._node
            sites, unresolved = [], []
            for n in sorted(self.scanner.nodes_on_page(page)):
                d = node[n]
                sites += [a for a, _name, _klass in d["sensitive"] if a & ~(PAGE - 1) == page]
            for u in self.cfg.unresolved_sites():
                if u & ~(PAGE - 1) == page:
                    unresolved.append(u)
            self._on_new_code(sites, unresolved)

    def _scannable(self, addr: int) -> bool:
        p = self.live_phys(addr)
        return p is not None and p < self.vm.config.mem_bytes

