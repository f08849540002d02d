"""CSAM for bt mode: code is scanned before it runs, and rescanned when it changes.

No page protections (mem_protect splits Unicorn's memory map: milliseconds a
call, /work/shared/notes/unicorn-x86-facts.md); native hooks instead:

* Block check: the instruction clock's native block hook (runtime/_clock.c)
  checks every block the guest kernel starts in RAM against the scanner's
  per-page instruction-start flags (scanner/pages.py, shared as the bytearrays
  themselves).  A start that is not a scanned instruction -- first execution,
  a computed ret/jmp into a page scanned for other code, a changed `call
  [disp32]` pointer, an exception return -- stops the engine before the block
  runs; `_on_unscanned` scans it and the block runs.  VMM-chosen targets
  (interrupt handlers, emulated far transfers) are scanned when the VMM sends
  the guest there (`ensure_scanned`).  Each walk is bounded (WALK_BOUND): the
  branch targets it did not reach are deferred (scanner/scan.py `walk_bound`),
  scanned by this same check when they run.  After each scan the owner is told which
  sites and unresolved indirect branches are new (`on_new_code`): what to patch
  is the patch policy's decision, not CSAM's.
* Starts inside a jump patch's bytes (a branch found after the patch, or a
  guest handler resuming after a fault inside a stub) are refused too: they
  are sent to the matching point of the stub, or the patch is removed and its
  site re-planned.
* int3 guards on indirect branches the scanner could not resolve: their first
  byte traps, `guard_exit` computes the target, scans it if it is new, and
  performs the branch.
* Self-modifying code: a few native write hooks whose ranges span every page
  that ever held scanned code (`_watch_writes`, runtime/hookspans.py) mark a page dirty when a
  guest store touches scanned bytes.  The store completes as the CPU did it (never aborted and replayed); the block check
  refuses every later block start on a dirty page, and before anything is
  scanned the dirty pages are invalidated: the blocks the stores hit and what
  depends on them dropped, the patches and guards over them removed (the
  guest's new bytes kept) -- runtime/smc.py; the whole page only when the
  write log overflowed.
* Guest loads of patched bytes see the guest's own bytes, on every page: each
  page carrying a patch or guard gets native read hooks and a table of its
  hidden bytes (`_hide`; runtime/_clock.c, "Patches hidden from guest loads").

Paging: views of physical pages by linear pages, and the parking of an
alias's scan, are runtime/views.py (`Views`, which CSAM inherits).
"""
from __future__ import annotations

from unicorn import x86_const as X

from bt.x86 import PAGE
from patcher.policy import insn_at
from patcher.templates import Insn
from runtime.decode import decode, effective_address
from runtime.emulation import push
from runtime.smc import SmcRewrites
from runtime import hookspans
from runtime.views import FLAGS, Views
from scanner.cfg import CFG
from scanner.scan import Scanner

INTERIOR = 1        # clock.set_page table: bytes a jump patch covers after its first
PATCH_SITE = 2      # ... and in that table: a jump patch's site (runtime/_clock.c weighs its jmp 0)
HIDDEN = 2          # clock.set_page table: [mask | guest bytes] of the page's patch bytes
HIDE_BEFORE = 15    # a load crossing into a page is matched by its first byte (<= 16 bytes)
# Instructions one lazy walk decodes before it defers the branch targets left
# (scanner/scan.py `walk_bound`; None: the whole reachable code).  Unbounded,
# the first walks of Debian's kernel decoded all of it reachable from its entry,
# twice (identity and linear addresses), and the SMC and view work followed the
# scanned bytes; 256 / 1,024 / 4,096 measured 15.8 / 14.5 / 15.1 CPU s for
# 150 M instructions against 21.9 unbounded (docs/benchmarks.md, "Bounded lazy walks").
WALK_BOUND = 1024


class CSAM(Views, SmcRewrites):
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
        # Far branches' targets are scanned when they run (defer_far): the
        # segment they run in is known then, and CSAM never scans 16-bit code
        # (runtime/bt.py, "16-bit code"; a walk that followed a far jump into a
        # 16-bit segment put int3 patches on its code: test_realmode.py).
        self.scanner = Scanner(self._scan_read, self.cfg, walk_bound=WALK_BOUND, defer_far=True)
        self.guards: dict[int, Insn] = {}
        self.code_pages: set[int] = set()
        self._scanned_pages_ever: set[int] = set()
        self._read_hooked: set[int] = set()         # pages the read hooks' range covers for
        self._read_spans: list[tuple[int, int]] = []     # ... their [first, last] pages: a hook pair each
        self._hidden: dict[int, bytearray] = {}     # page -> the table shared with C (HIDDEN)
        self._written: set[int] = set()             # pages the guest wrote code on
        self._hide_everywhere = self.vm.config.hide_patches == "every-page"
        self._write_pages: set[int] = set()         # pages the code-write hooks cover for
        self._write_spans: list[tuple[int, int]] = []    # ... their [first, last] pages: a hook each
        self._interior: dict[int, bytearray] = {}
        # Paging (see the top): linear page <-> the physical page holding its scan.
        self.frame_of: dict[int, int] = {}
        self.view_of: dict[int, int] = {}
        # Scans of aliases another alias took over, kept for their return:
        # linear page -> (physical page, its bytes then).  `_resume` queues
        # the pages to re-plan in `_replan`.
        self._parked: dict[int, tuple[int, bytes]] = {}
        self._replan: list[int] = []
        self._walking = False                       # inside the scanner's walk (`scan`)
        self._stale: set[int] = set()               # parked scans found invalid during it
        self._published: set[int] = set()           # linear pages whose flags C has
        self.clock = self.vm.clock
        patcher.on_change = self._patches_changed

    @property
    def read_hidden_pages(self) -> int:
        return len(self._read_hooked)

    def boot(self) -> None:
        self.clock.enable_code_check(self.vm.config.mem_bytes, self.vm.quirks.off.hflags,
                                     self._on_unscanned)

    def _scan_read(self, addr: int, n: int) -> bytes | None:
        """The scanner's reads, by linear address: each page read becomes the
        view of the physical page it maps to now (older views of either go)."""
        out = bytearray()
        a = addr
        while len(out) < n and a >= 0:
            page = a & ~(PAGE - 1)
            if self.claim_view(page) is None:
                break
            k = min(n - len(out), page + PAGE - a)
            out += self.linear_visible(a, k)
            a += k
        return bytes(out) if out else None

    def linear_visible(self, addr: int, n: int) -> bytes:
        """The code at linear `addr` as the guest wrote it: patches hidden (guards
        are not: they sit on instructions already scanned)."""
        return self.patcher.original_bytes(addr, self.mode._raw_read(addr, n))

    def hidden_bytes(self, addr: int, data: bytes) -> bytes:
        """`data` read at *physical* `addr` with the guest's bytes under patches
        and guards (the per-physical-page tables of `_hide`)."""
        if not self._hidden:
            return data
        end = addr + len(data)
        out = None
        for frame in range(addr & ~(PAGE - 1), end, PAGE):
            table = self._hidden.get(frame)
            if table is None:
                continue
            out = out or bytearray(data)
            for i in range(max(frame, addr) - frame, min(frame + PAGE, end) - frame):
                if table[i]:
                    out[frame + i - addr] = table[PAGE + i]
        return bytes(out) if out is not None else data

    # -- the block check's refusals ------------------------------------------------------
    def _on_unscanned(self, address: int) -> int:
        """The block check refused a guest-kernel block at `address` (called
        between engine runs by runtime/clock.py).  Returns where to run."""
        if self.mode.native_block(address):
            return address                       # a native stretch's block (runtime/bt.py)
        self.drain_writes()
        if self.clock.c.known_start(address):
            return address                       # it was only on a dirty page: rescanned
        self.vm.counters.add("scan_exits")
        self.vm.exit_site(address)
        if self.claim_view(address & ~(PAGE - 1)) is None:
            # Not mapped (or not RAM): the fetch raises what the CPU would.
            self.stats.add("unscannable_starts")
            self.clock.c.allow_once(address)
            return address
        self._settle()
        p = self.patcher.covering(address)
        if p is not None and p.kind == "jump" and p.site < address < p.extent:
            return self._into_patch(p, address)
        if self.cfg.pages.state(address) != 1 or self.cfg.block_of(address) is None:
            self.scan(address)
        if not self.clock.c.known_start(address):
            # Nothing scannable starts there (undecodable bytes, the middle of a
            # scanned instruction): let the engine raise what the CPU would.
            self.stats.add("unscannable_starts")
            self.clock.c.allow_once(address)
        return address

    def stub_point(self, address: int) -> int:
        """Where a VMM-made branch to `address` (an emulated iretd's return, a far
        jump) runs: the stub's copy of the instruction when `address` lies inside
        the bytes a jump patch replaced, else `address` (the block check handles
        the rest).  The block check would redirect it too, after refusing the
        start (a scan exit); a #GP handler that resumes after a patched
        `mov fs` returns there on every fault (demo:exceptions, issue 15 cause 12)."""
        p = self.patcher.covering(address)
        if p is None or p.kind != "jump" or not p.site < address < p.extent:
            return address
        for lo, _hi, guest in p.stub_map:
            # not where a template takes its scratch register over (share_scratch):
            # the block check then re-plans the patch (_into_patch)
            if guest == address and guest not in p.shares_scratch:
                self.stats.add("patch_interior_redirects")
                return lo
        return address

    def _into_patch(self, p, address: int) -> int:
        """A start inside the bytes a jump patch replaced: run the stub's copy of
        that instruction when the stub has one, else remove the patch, scan the
        new start and re-plan the site (the policy now sees the branch target)."""
        for lo, _hi, guest in p.stub_map:
            # (a template that takes its scratch register over from the one
            # before it cannot be entered on its own: patcher/templates.py share_scratch)
            if guest == address and guest not in p.shares_scratch:
                self.stats.add("patch_interior_redirects")
                return lo
        self.stats.add("patch_interior_replans")
        self.patcher._remove(p)
        self.patcher.counters.add("removed")
        self.scan(address)
        # Every instruction the stub translated is re-planned, not only the
        # site: a sensitive one after it (now maybe a patch of its own, or an
        # int3) would otherwise run natively and show the host's truth.
        self._on_new_code([i.addr for i in p.covered], [])
        if not self.clock.c.known_start(address):
            self.clock.c.allow_once(address)
        return address

    def _patches_changed(self, lo: int, hi: int) -> None:
        """Keep the block check's table of patch-interior bytes in step (1 inside
        a jump patch's covered bytes; 2 at its site, where the clock weighs the
        `jmp` to the stub 0: the stub counts the guest instructions), and the
        instruction breakpoints on stub copies (runtime/breakpoints.py)."""
        breakpoints = getattr(self.mode, "breakpoints", None)
        if breakpoints is not None and breakpoints.enabled:
            breakpoints.refresh()
        for page in {lo & ~(PAGE - 1), (hi - 1) & ~(PAGE - 1)}:
            frame = self.frame_of.get(page)
            if frame is None:
                continue
            table = bytearray(PAGE)
            for p in self.patcher.patches_on_page(page):
                if p.kind != "jump":
                    continue
                if p.site & ~(PAGE - 1) == page:
                    table[p.site - page] = PATCH_SITE
                # every byte the stub stands for: an instruction after the
                # jmp's 5 bytes run natively would show the host's truth
                # (a tick's return onto a covered iretd ran it at CPL 1)
                for a in range(p.site + 1, p.extent):
                    if a & ~(PAGE - 1) == page:
                        table[a - page] = 1
            if any(table):
                self._interior[frame] = table
                self.clock.c.set_page(INTERIOR, frame, table)
            elif self._interior.pop(frame, None) is not None:
                self.clock.c.set_page(INTERIOR, frame, None)
            self._hide(page)

    def _hide(self, page: int) -> None:
        """Publish the page's patch bytes (jump and int3 patches, guards, a ring-3
        passage's int3s) with the
        guest's bytes under them, so guest loads see the latter; the first time a
        page carries any, it gets its read hooks.  Only bytes that differ from the
        guest's are marked (a jump patch's covered bytes after its 5 are the
        guest's own).  With `hide_patches="written-pages"` only pages the guest
        wrote code on are covered: a read hook anywhere costs every guest load
        (docs/fidelity.md, "Reads of patched code")."""
        frame = self.frame_of.get(page)
        if frame is None:
            return
        table = bytearray(2 * PAGE)
        spans = [(p.site, p.orig) for p in self.patcher.patches_on_page(page)]
        spans += [(g, ins.data[:1]) for g, ins in self.guards.items() if g & ~(PAGE - 1) == page]
        spans += [(ins.addr, ins.data[:1]) for _, trapped in self.patcher.lifted.values()    # runtime/ring3pass.py
                  for ins in trapped if ins.addr & ~(PAGE - 1) == page]
        for site, orig in spans:
            now = self._raw(site, len(orig))
            for i, b in enumerate(orig):
                a = site + i
                if a & ~(PAGE - 1) == page and now[i] != b:
                    table[a - page] = 1
                    table[PAGE + a - page] = b
        if not any(table[:PAGE]):
            self._hidden.pop(frame, None)
            self.clock.c.set_page(HIDDEN, frame, None)
            return
        self._hidden[frame] = table
        self.clock.c.set_page(HIDDEN, frame, table)
        if frame not in self._read_hooked and (self._hide_everywhere or frame in self._written):
            self._read_hooked.add(frame)
            if not hookspans.covers(self._read_spans, frame):
                # A few hook pairs whose ranges span every hidden page; pages in
                # between without a table cost the hooks a lookup per load
                # (runtime/hookspans.py: and a state restore in Unicorn).
                self._read_spans = hookspans.spans(self._read_hooked)
                self.stats.add("read_hook_spans")
                self.clock.hide_patch_bytes([(max(lo - HIDE_BEFORE, 0), hi + PAGE - 1)
                                             for lo, hi in self._read_spans])

    def scan(self, addr: int) -> None:
        self.drain_writes()
        cfg = self.cfg
        cfg.pages.refresh()                         # what changed before the walk is not its
        if self.paging():
            self.claim_view(addr & ~(PAGE - 1))     # a parked scan there: settled before the walk
        self._walking = True
        try:
            self.scanner.scan_from(addr)
        finally:
            self._walking = False
        self.stats.add("scans")
        pages = cfg.pages.refresh()                 # the code pages the walk added
        for page in pages:
            self.stats.add("pages_scanned")
            if page in self._scanned_pages_ever:
                self.stats.add("pages_rescanned")
            self._scanned_pages_ever.add(page)
        # The sites this scan decoded are the new ones (each byte is decoded
        # once): no walk over the whole CFG per lazy scan.  In address order, so
        # a patch starting at `cli` absorbs the `pushfd` after it.
        sites = [a for a, _name, _klass in sorted(self.scanner.new_sites)]
        unresolved = sorted(set(self.scanner.new_unresolved))
        self._on_new_code(sites, unresolved)
        self._settle()
        new_frames = []
        # Every code page with a view that C does not have yet (a set
        # difference, no copy or sort of the code pages; a page without a view
        # lost it to another alias during the walk: `_resume` publishes it).
        for page in sorted(cfg.pages.known_code() - self._published):
            frame = self.frame_of.get(page)
            if frame is None:
                continue
            self._published.add(page)
            self.code_pages.add(frame)
            self.clock.c.set_page(FLAGS, frame, cfg.pages.pages[page].flags)
            new_frames.append(frame)
        self._watch_writes(new_frames)

    def _watch_writes(self, pages: list[int]) -> None:
        """Grow the code-write hooks' ranges to cover `pages` (physical page
        addresses; kept for the engine's life; the C callback checks the page's
        current flags): at most one change per scan.  A few hooks, not one per
        page: Unicorn checks every store against every write hook's range
        (runtime/clock.py watch_code_writes), and not one over everything:
        a store inside a range costs a state restore even on a page without
        code (runtime/hookspans.py: the ranges skip gaps of 1 MiB and more,
        Linux's .rodata and .data).  A store to a page inside a range that
        holds no code costs the callback a table lookup."""
        if not pages:
            return
        self._write_pages.update(pages)
        if not all(hookspans.covers(self._write_spans, p) for p in pages):
            self._write_spans = hookspans.spans(self._write_pages)
            self.stats.add("write_hook_spans")
            self.clock.watch_code_writes([(lo, hi + PAGE - 1) for lo, hi in self._write_spans])

    def ensure_scanned(self, target: int) -> None:
        """The VMM sends the guest to `target`: interrupt handlers and other
        VMM-chosen targets can sit in pages that are already executable (scanned
        for other code), so scan them explicitly."""
        if self.cfg.block_of(target) is None and self._scannable(target):
            self.scan(target)

    def unhide(self, addr: int, data: bytes) -> bytes:
        """`data` read at `addr` with the guest's bytes under patches and guards,
        as a guest load sees it (the tables C keeps current on guest stores)."""
        if not self._hidden:
            return data
        out = None
        frames: dict[int, int | None] = {}
        for i in range(len(data)):
            a = addr + i
            page = a & ~(PAGE - 1)
            if page not in frames:
                frames[page] = self.live_phys(page)   # the load's own translation
            f = frames[page]
            table = self._hidden.get(f) if f is not None else None
            if table is not None and table[a & (PAGE - 1)]:
                out = out or bytearray(data)
                out[i] = table[PAGE + (a & (PAGE - 1))]
        return bytes(out) if out is not None else data

    # -- int3 guards on unresolved indirect branches --------------------------------------
    def guard(self, addr: int) -> None:
        site = insn_at(self.cfg, addr)
        if site is None or addr in self.guards:
            return
        self.guards[addr] = site
        self.mode._raw_write(addr, b"\xcc")
        self.mode._flush(addr, addr + 1)
        self._hide(addr & ~(PAGE - 1))
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
        if self.cfg.block_of(target) is None and self._scannable(target):
            self.scan(target)
        if insn.mnemonic == "call":
            push(self.mode, site + ins.size, 4)
        self.vm.fast.reg_write(X.UC_X86_REG_EIP, target)
        return True

    # -- self-modifying code ----------------------------------------------------------------
    def drain_writes(self) -> None:
        """Invalidate the pages the guest stored scanned bytes into since the last
        drain (the native write hook marked them; the stores have landed)."""
        if not self.clock.c.has_writes():
            return
        frames, log, complete = self.clock.c.take_writes()
        self.stats.add("code_page_writes", n=len(log))
        # The log by physical page (a drain can hold tens of thousands of
        # stores over a thousand pages: ftrace's boot-time NOPing).
        by_frame: dict[int, list] = {}
        for a, n in log:
            for f in {a & ~(PAGE - 1), (a + n - 1) & ~(PAGE - 1)}:
                by_frame.setdefault(f, []).append((a, n))
        for frame in frames:
            page = self.view_of.get(frame)
            if page is None:                     # no scan there any more
                self.clock.c.set_page(FLAGS, frame, None)
                continue
            # the log is physical; the patches are keyed by the view's linear
            # addresses (a patch or block may run on into the next page)
            near = [w for f in (frame - PAGE, frame, frame + PAGE) for w in by_frame.get(f, ())]
            written = [(a - frame + page, n) for a, n in near] if complete else None
            # Only what the stores changed (runtime/smc.py); the whole page
            # when the log overflowed.
            if written is None or not self._invalidate_written(page, written):
                self._invalidate(page, written)

    def _invalidate(self, page: int, written, guest_wrote: bool = True, keep_scan: bool = False) -> None:
        """Drop the linear page's code: its patches and guards come out with the
        guest's bytes put back -- except the bytes the guest itself wrote since
        (`written`: (linear address, size) stores; None = the log overflowed: a
        byte that no longer holds the patch's value was written by the guest)."""
        frame = self.frame_of.get(page, page)
        if guest_wrote:
            self.stats.add("smc_invalidations")
            self._written.add(frame)
        patches = [p for p in self.patcher.patches_on_page(page)]
        keep: list[tuple[int, bytes]] = []
        for p in patches:
            patched = self._raw(p.site, len(p.orig))
            for i in range(len(p.orig)):
                a = p.site + i
                if self._guest_wrote(a, written, patched[i], p, i):
                    keep.append((a, patched[i:i + 1]))
        guards = [g for g in self.guards if g & ~(PAGE - 1) == page]
        for g in guards:
            now = self._raw(g, 1)
            if written is not None and any(w <= g < w + n for w, n in written) or \
                    (written is None and now != b"\xcc"):
                keep.append((g, now))
        self.patcher.remove_page(page)
        for g in guards:
            self.mode._raw_write(g, self.guards.pop(g).data[:1])
        for a, b in keep:
            self.mode._raw_write(a, b)
        self._hide(page)
        if not keep_scan:
            dropped = self.scanner.invalidate_page(page)
            self.cfg.pages.drop(page)
            if guest_wrote:
                self.stats.add("smc_blocks_dropped", n=len(dropped))
        self._published.discard(page)
        self.mode._flush(page, page + PAGE)
        if frame < self.vm.config.mem_bytes:
            self.code_pages.discard(frame)
            self.clock.c.set_page(FLAGS, frame, None)

    def _raw(self, addr: int, n: int) -> bytes:
        return self.mode._raw_read(addr, n)

    @staticmethod
    def _guest_wrote(a: int, written, now: int, p, i: int) -> bool:
        if written is not None:
            return any(w <= a < w + n for w, n in written)
        patch_byte = b"\xcc" if p.kind == "int3" else None
        if patch_byte is not None:
            return now != patch_byte[0]
        return False    # jump bytes: assume unchanged (only when the log overflowed)
