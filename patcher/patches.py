"""Patch installation (PATM); what to patch is patcher/policy.py's decision.

A sensitive instruction at a scanned site becomes either
  * a *jump patch*: a 5-byte `jmp rel32` over the site into a stub that
    translates the site and the instructions after it that the jump covers
    (relocated, with relative branches re-encoded), then jumps back; or
  * an *int3 patch* (the fallback, as PATM's int3 replacement): the first byte
    becomes 0xCC and the VMM emulates the original instruction on the #BP exit.
The policy refuses a jump (reason counted here) when the CFG shows a branch target inside
the covered bytes, when the 5 bytes cross a page boundary (every code page is
write-monitored), when a covered byte was not scanned, or when a covered
instruction cannot run from the stub cache (it needs the VMM, or its meaning
depends on where it executes).
Guest reads of code see the patch bytes (as under PATM); a guest *write* to a
code page removes its patches first, so the guest then reads its own bytes.
"""
from __future__ import annotations

import bisect
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

import capstone

from bt.catalog import SHADOW_OPENERS, classify_bytes
from bt.x86 import PAGE
from patcher.policy import JMP_SIZE, Refusal, direct
from patcher.stubcache import AssemblyError, StubCache, StubCacheFull, assemble
from patcher.templates import (EMULATE_EXITS, EXIT, IOPL_TEMPLATES, RING3_ENTRY_SIZE, RING3_TAILS,
                               TERMINATORS, Insn, StubContext, share_scratch, shared_register, template_for)

__all__ = ["Patch", "Patcher", "Refusal", "JMP_SIZE"]

# Stub bytes of removed jump patches kept for reuse (patch churn: code that
# rewrites itself near its sensitive instructions gets the same patch again
# after every write).  Beyond this, the least recently removed are freed.
RETIRED_STUB_BYTES = 64 << 10

_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def row_name(ins: Insn) -> str:
    """The catalog row of a patched instruction (its mnemonic if it has none)."""
    row = classify_bytes(ins.data)
    return row.name if row is not None else ins.mnemonic


@dataclass
class Patch:
    site: int
    name: str
    kind: str                         # jump | int3
    orig: bytes                       # the guest bytes the patch replaced
    covered: tuple[Insn, ...] = ()
    end: int = 0                      # guest address after the covered instructions
    stub: int = 0
    stub_size: int = 0
    exits: dict = field(default_factory=dict)        # stub addr -> (kind, guest addr, resume)
    stub_map: list = field(default_factory=list)     # (stub lo, stub hi, guest addr)
    # (stub lo, stub hi) of the guest's own instructions copied into the stub: their
    # memory accesses are the guest's, not the stub's (runtime/isolation.py)
    relocated: list = field(default_factory=list)
    # guest addresses whose stub code starts without saving its scratch register
    # (share_scratch): entering the stub there is not allowed (runtime/csam.py);
    # the value is that register, whose guest value the state page's scratch
    # word holds at that point (an interrupt taken there: runtime/bt.py)
    shares_scratch: dict = field(default_factory=dict)
    # Stub bytes that depend on the guest's IOPL (patcher/templates.py
    # IOPL_TEMPLATES): (stub address, its value for IOPL 0, 1, 2, 3), and the
    # IOPL the stub's bytes are for now (`Patcher.set_iopl`).
    iopl_bytes: tuple = ()
    iopl: int = 0
    # pushf(d) entries switched between a 5-byte nop and a jump to their ring-3
    # tail (patcher/templates.py RING3_ENTRY): (stub address, nop bytes, jump
    # bytes); `ring3` says which the stub has now.  The tails' ranges (stub lo,
    # stub hi, guest addr) are apart from stub_map: the clock counts a guest
    # instruction where its stub_map range starts, and a tail is not a start.
    ring3_entries: tuple = ()
    ring3: bool = False
    tails: tuple = ()
    refused: str | None = None        # why a jump was refused (int3 patches)
    enabled: bool = True
    code: bytes = b""                 # the stub's bytes until they are written to the cache

    @property
    def span(self) -> tuple[int, int]:
        return self.site, self.site + len(self.orig)

    @property
    def extent(self) -> int:
        """The guest address after everything the patch stands for: its
        replaced bytes and, for a jump, every instruction its stub translates
        (those after the jmp's 5 bytes are still the guest's own)."""
        return max(self.end, self.site + len(self.orig))


class Patcher:
    """Plans, installs and removes patches; owns the stub cache."""

    def __init__(self, uc, cache: StubCache, state_addr: int, read, write, flush, counters):
        self.uc = uc
        self.cache = cache
        self.state_addr = state_addr
        self._read = read          # read(addr, n) -> bytes (guest memory, as it is)
        self._write = write        # write(addr, bytes)
        self._flush = flush        # flush(lo, hi): drop translated blocks
        self.patches: dict[int, Patch] = {}
        self._stub_index: list[tuple[int, int]] | None = None   # (stub, site), sorted
        self._by_page: dict[int, set[int]] = {}
        # installed, refused, removed, ...: declared by the runtime (runtime/counters.py
        # PATCH_STATS) and handed in, so the patcher imports nothing from runtime/.
        # It needs `add(name, key=None)` and `report(**gauges)`.
        self.counters = counters
        # on_change(lo, hi): guest bytes [lo, hi) gained or lost a patch (CSAM keeps
        # the block check's table of covered bytes from it: runtime/csam.py).
        self.on_change = None
        # on_free(lo, hi): a stub's space [lo, hi) was freed (the runtime drops what
        # it knows about that stub: runtime/bt.py).
        self.on_free = None
        # Removed jump patches whose stubs are kept: (site, guest bytes) -> Patch,
        # least recently removed first (`_reuse`, `_retire`).
        self._retired: OrderedDict[tuple, Patch] = OrderedDict()
        self._retired_bytes = 0
        # The guest's IOPL the flag stubs are assembled for (the runtime tells
        # every change: `set_iopl`).
        self.iopl = 0
        # Whether pushf(d) stubs must test for CPL 3 (`set_ring3_tests`).
        self.ring3_tests = False
        # Jump patches lifted while ring 3 passes their site (`lift`), by site:
        # (patch, the covered instructions holding an int3 meanwhile).
        self.lifted: dict[int, tuple[Patch, list[Insn]]] = {}

    # -- queries -------------------------------------------------------------------
    def at(self, site: int) -> Patch | None:
        return self.patches.get(site)

    def patches_on_page(self, page: int) -> list[Patch]:
        """The installed patches with bytes on `page`, in address order."""
        return [self.patches[s] for s in sorted(self._by_page.get(page, ())) if s in self.patches]

    def count_refusal(self, why: Refusal) -> None:
        self.counters.add("refused", why.value)

    def original_bytes(self, addr: int, data: bytes) -> bytes:
        """`data` read at `addr` with every installed patch's original bytes put back."""
        out = bytearray(data)
        for page in range(addr & ~(PAGE - 1), addr + len(data) + JMP_SIZE, PAGE):
            for site in self._by_page.get(page, ()):
                p = self.patches[site]
                for i, b in enumerate(p.orig):
                    j = site + i - addr
                    if 0 <= j < len(out):
                        out[j] = b
        for _, trapped in self.lifted.values():       # the int3s of a ring-3 passage
            for ins in trapped:
                if 0 <= ins.addr - addr < len(out):
                    out[ins.addr - addr] = ins.data[0]
        return bytes(out)

    def covering(self, addr: int) -> Patch | None:
        """The installed patch whose covered guest instructions include `addr`."""
        for page in {addr & ~(PAGE - 1), (addr - JMP_SIZE) & ~(PAGE - 1)}:
            for site in self._by_page.get(page, ()):
                p = self.patches.get(site)
                if p is not None and p.site <= addr < p.extent:
                    return p
        return None

    def stub_owner(self, eip: int) -> Patch | None:
        """The enabled patch whose stub contains `eip` (bisect over stub starts;
        stubs are allocated in address order and never overlap)."""
        if self._stub_index is None:
            self._stub_index = sorted((p.stub, p.site) for p in self.patches.values() if p.stub)
        i = bisect.bisect_right(self._stub_index, (eip, 0xFFFFFFFF)) - 1
        if i < 0:
            return None
        p = self.patches.get(self._stub_index[i][1])
        return p if p is not None and p.stub <= eip < p.stub + p.stub_size else None

    def guest_address(self, eip: int) -> int:
        """Map an address inside a stub back to the guest instruction it translates."""
        p = self.stub_owner(eip)
        if p is None:
            return eip
        for lo, hi, guest in p.stub_map:
            if lo <= eip < hi:
                return guest
        for lo, hi, guest in p.tails:
            if lo <= eip < hi:
                return guest
        return p.site

    # -- installing ------------------------------------------------------------------
    def install_jump(self, site: Insn, covered: list[Insn]) -> Patch:
        """Install the jump patch the policy planned (patcher/policy.py `decide`);
        an int3 patch when the stub cannot be built."""
        end = covered[-1].addr + covered[-1].size
        for other in [p for p in self.patches.values() if site.addr < p.site < end]:
            self._remove(other)
            self.counters.add("superseded")
        patch = self._reuse(site, covered)
        if patch is not None:
            self._enable(patch)
            return patch
        try:
            patch = self._build_jump(site, covered)
        except AssemblyError:
            return self.install_int3(site, Refusal.ASSEMBLY)
        except StubCacheFull:
            return self.install_int3(site, Refusal.CACHE_FULL)
        self._enable(patch)
        return patch

    def install_int3(self, site: Insn, why: Refusal | None) -> Patch:
        orig = self._read(site.addr, 1)
        patch = Patch(site.addr, row_name(site), "int3", orig, covered=(site,),
                      end=site.addr + site.size, refused=why.value if why else None)
        if why is not None:
            self.count_refusal(why)
        self.counters.add("int3_fallbacks")
        self._write(site.addr, b"\xcc")
        self._flush(site.addr, site.addr + 1)
        self._register(patch)
        return patch

    def _build_jump(self, site: Insn, covered: list[Insn]) -> Patch:
        """Assemble the stub where `reserve` will put it: at the cache's end, or
        (when one is big enough) in a freed block, assembled again there."""
        patch = self._build_jump_at(site, covered, self.cache.start + self.cache.used)
        there = self.cache.next_free(patch.stub_size)
        if there is not None:
            again = self._build_jump_at(site, covered, there)
            if again.stub_size == patch.stub_size:
                patch = again
        addr = self.cache.reserve(patch.stub_size) if patch.stub != self.cache.start + self.cache.used \
            else self.cache.reserve_end(patch.stub_size)
        assert addr == patch.stub
        self.cache.write(addr, patch.code, exclude={a for a, _ in patch.iopl_bytes})
        self._flush(addr, addr + patch.stub_size)     # a freed block may hold translated code
        self.cache.mark_starts(patch.stub_map)
        patch.code = b""
        return patch

    def _build_jump_at(self, site: Insn, covered: list[Insn], start: int) -> Patch:
        ctx = StubContext(self.state_addr, f"p{site.addr:x}", self.iopl)
        cur = start
        code = bytearray()
        exits: dict = {}
        stub_map = []
        relocated = []
        shares: dict[int, str] = {}
        iopl_bytes: list = []
        ring3_parts: list = []           # (entry, back, done, insn, tail template)
        terminated = False
        end = covered[-1].addr + covered[-1].size
        prev = None                       # (start, text, guest addr) of the last part if a template
        for k, ins in enumerate(covered):
            key = row_name(ins)
            template = template_for(key, ins.data)
            if template is not None:
                terminated |= key in TERMINATORS
                # The template is the one instruction of an sti or SS-load shadow: end
                # its translated block right after it, so that the next block
                # starts where the next guest instruction's stub code does,
                # where the clock's window check lets a waiting interrupt in
                # (runtime/_clock.c, "Interrupt window"), as the CPU does
                # after the shadow's instruction.
                shadow = key not in TERMINATORS and self._in_irq_shadow(covered, k)

                def make(c: StubContext, template=template, ins=ins, shadow=shadow) -> str:
                    text = template(c, ins)
                    if shadow:
                        over = c.local("shadow")
                        text = f"{text}; jmp {over}; {over}:"
                    return text
                text = make(ctx)
                # A template whose exit emulates it from its own address with
                # nothing done yet (iretd closing a patch, patcher/policy.py
                # `_closing_iret`) keeps its own save: merged, its exit would
                # emulate the previous instruction again.
                if prev is not None and key not in EMULATE_EXITS:
                    shared = share_scratch(ctx, prev[1], text)
                    if shared is not None:
                        # back up over the previous template and assemble it without its restore
                        before, text = shared
                        start0, _, ins0 = prev
                        g0 = ins0.addr
                        del code[start0 - start:]
                        for a in [a for a in exits if a >= start0]:
                            del exits[a]
                        relocated = [r for r in relocated if r[0] < start0]
                        part0 = assemble(before, start0)
                        relocated += _guest_accesses(part0, start0, ins0)
                        # an exit in the merged template resumes at the guest address
                        # (re-planned there): the next template cannot be entered alone
                        for a in _exit_addresses(part0, start0):
                            exits[a] = ("emulate", g0, None)
                        code += part0
                        cur = start0 + len(part0)
                        stub_map[-1] = (start0, cur, g0)
                        shares[ins.addr] = shared_register(prev[1])
                part = assemble(text, cur) if text else b""
                if key in IOPL_TEMPLATES:
                    iopl_bytes += _iopl_variants(part, cur, self.iopl,
                                                 tuple(make(ctx.for_iopl(v, "v")) for v in range(4)))
                if key in RING3_TAILS:
                    ring3_parts.append((cur, cur + RING3_ENTRY_SIZE, cur + len(part), ins, RING3_TAILS[key]))
                # The VMM emulates the instruction at an exit and goes on with the
                # stub code of the next covered instruction (a terminator's routine
                # names its own target).
                after = None if key in TERMINATORS else cur + len(part)
                for a in _exit_addresses(part, cur):
                    exits[a] = ("emulate", ins.addr, after)
                relocated += _guest_accesses(part, cur, ins)
                prev = (cur, text, ins)
            else:
                prev = None
                part, terminated_here = self._relocate(ins, cur)
                terminated |= terminated_here
                relocated.append((cur, cur + len(part)))
            stub_map.append((cur, cur + len(part), ins.addr))
            code += part
            cur += len(part)
            if terminated:
                break
        if not terminated:
            part = assemble(f"jmp {end:#x}", cur)
            code += part
            cur += len(part)
        # Ring-3 tails after the jump back: off the path the stub runs at CPL 1.
        ring3_entries, tails = [], []
        for entry, back, done, ins, tail in ring3_parts:
            part = assemble(tail(ctx, ins, f"{back:#x}", f"{done:#x}"), cur)
            jump = b"\xe9" + struct.pack("<i", cur - (entry + JMP_SIZE))
            plain = bytes(code[entry - start:entry - start + RING3_ENTRY_SIZE])
            ring3_entries.append((entry, plain, jump))
            if self.ring3_tests:
                code[entry - start:entry - start + RING3_ENTRY_SIZE] = jump
            tails.append((cur, cur + len(part), ins.addr))
            relocated += _guest_accesses(part, cur, ins)
            code += part
            cur += len(part)
        orig = self._read(site.addr, JMP_SIZE)
        return Patch(site.addr, row_name(site), "jump", orig,
                     tuple(covered), end, start, len(code), exits, stub_map, relocated=relocated,
                     shares_scratch=shares, iopl_bytes=tuple(iopl_bytes), iopl=self.iopl,
                     ring3_entries=tuple(ring3_entries), ring3=self.ring3_tests, tails=tuple(tails),
                     code=bytes(code))

    def _in_irq_shadow(self, covered: list[Insn], k: int) -> bool:
        """Does covered[k] follow an instruction that opens an interrupt shadow
        (sti; mov ss / pop ss, whose exits open it: runtime/emulation.py
        `settle_irq_shadow`)?  For the site, the guest bytes before it: an sti
        (0xFB), a `pop ss` (0x17) or a register `mov ss` (8E D0-D7); a memory
        `mov ss` before a site is not seen.  (Such bytes ending another
        instruction only cost a needless jmp.)"""
        if k > 0:
            return covered[k - 1].data == b"\xfb" or row_name(covered[k - 1]) in SHADOW_OPENERS
        try:
            before = self._read(covered[0].addr - 2, 2)
        except Exception:       # nothing readable before the site: no opener there
            try:
                before = b"\x00" + self._read(covered[0].addr - 1, 1)
            except Exception:
                return False
        return before[1] in (0xFB, 0x17) or (before[0] == 0x8E and before[1] & 0xF8 == 0xD0)

    def _relocate(self, ins: Insn, at: int) -> tuple[bytes, bool]:
        """Copy one covered instruction to the stub; re-encode relative branches."""
        m = ins.mnemonic
        if m in _INVERSE and direct(ins):
            # A jcc from the stub cache back into RAM crosses 2^32, and Unicorn
            # 2.1 does not wrap a jcc's target to 32 bits as it does a jmp's: the
            # guest block would run at 0x1_xxxxxxxx, outside the instruction
            # clock's and the block check's view (tests/runtime/test_unicorn_facts.py).
            # So the inverse jcc skips a jmp, which wraps.
            over = f"r{at:x}_over"
            target = int(ins.op_str, 16)
            return assemble(f"{_INVERSE[m]} {over}; jmp {target:#x}; {over}:", at), False
        if m.startswith("j") and direct(ins):
            target = int(ins.op_str, 16)
            return assemble(f"{m} {target:#x}", at), m == "jmp"
        if m == "call" and direct(ins):
            target = int(ins.op_str, 16)
            ret = ins.addr + ins.size
            return assemble(f"push {ret:#x}; jmp {target:#x}", at), True
        return bytes(ins.data), m in ("ret", "jmp")

    def _enable(self, patch: Patch) -> None:
        rel = (patch.stub - (patch.site + JMP_SIZE)) & 0xFFFFFFFF
        self._write(patch.site, b"\xe9" + struct.pack("<I", rel))
        self._flush(patch.site, patch.site + JMP_SIZE)
        self.cache.add_guest_jump(patch.site)
        self._register(patch)

    def _register(self, patch: Patch) -> None:
        self._index(patch)
        self.counters.add("installed", patch.name)
        if self.on_change is not None:
            self.on_change(*patch.span)

    def _index(self, patch: Patch) -> None:
        self.patches[patch.site] = patch
        self._stub_index = None
        for page in {patch.site & ~(PAGE - 1), (patch.site + len(patch.orig) - 1) & ~(PAGE - 1)}:
            self._by_page.setdefault(page, set()).add(patch.site)

    # -- lifting a jump patch while ring 3 passes (runtime/ring3pass.py) ------------------
    def lift(self, p: Patch, trap) -> list[Insn]:
        """Put the guest's bytes back at a jump patch's site for a while, keeping
        its stub (not retired, not counted as removed): ring 3 runs the original
        instructions there, where the supervisor-only stub is out of its reach.
        The covered instructions `trap(insn)` picks (the runtime's: those it
        emulates) get an int3 instead, as an int3 patch would; they are returned."""
        self._unindex(p)
        trapped = [i for i in p.covered if trap(i)]
        for ins in trapped:
            self._write(ins.addr, b"\xcc")
        self._flush(p.site, p.extent)
        self.lifted[p.site] = (p, trapped)
        if self.on_change is not None and trapped:
            self.on_change(p.site, p.extent)    # the int3s hidden from loads
        return trapped

    def put_back(self, p: Patch) -> bool:
        """Re-enable a lifted patch (not counted as installed again).  False when
        its guest bytes changed meanwhile or another patch took the site: the
        stub's space is given back instead."""
        _, trapped = self.lifted.pop(p.site)
        for ins in trapped:
            if self._read(ins.addr, 1) == b"\xcc":
                self._write(ins.addr, ins.data[:1])
        self._flush(p.site, p.extent)
        if p.site in self.patches or self._read(p.site, len(p.orig)) != p.orig:
            self.cache.free(p.stub, p.stub_size)
            if self.on_free is not None:
                self.on_free(p.stub, p.stub + p.stub_size)
            p.enabled = False
            if self.on_change is not None:
                self.on_change(p.site, p.extent)
            return False
        self._apply_variants(p)
        rel = (p.stub - (p.site + JMP_SIZE)) & 0xFFFFFFFF
        self._write(p.site, b"\xe9" + struct.pack("<I", rel))
        self._flush(p.site, p.site + JMP_SIZE)
        self.cache.add_guest_jump(p.site)
        self._index(p)
        if self.on_change is not None:
            self.on_change(p.site, p.extent)
        return True

    def _unindex(self, p: Patch) -> None:
        self.patches.pop(p.site, None)
        self._stub_index = None
        self._write(p.site, p.orig)
        self._flush(p.site, p.site + len(p.orig))
        self.cache.drop_guest_jump(p.site)
        for sites in self._by_page.values():
            sites.discard(p.site)
        if self.on_change is not None:
            self.on_change(*p.span)

    # -- removing (self-modifying code) ------------------------------------------------
    def remove_page(self, page: int) -> list[Patch]:
        """Remove every patch with bytes on `page`, restoring the guest's bytes."""
        gone = []
        for site in sorted(self._by_page.get(page, set())):
            p = self.patches.get(site)
            if p is None:
                continue
            self._remove(p)
            gone.append(p)
            self.counters.add("removed")
        return gone

    def _remove(self, p: Patch) -> None:
        self.patches.pop(p.site, None)
        self._stub_index = None
        self._write(p.site, p.orig)
        self._flush(p.site, p.site + len(p.orig))
        if p.kind == "jump":
            self.cache.drop_guest_jump(p.site)
            self._retire(p)
        p.enabled = False
        for sites in self._by_page.values():
            sites.discard(p.site)
        if self.on_change is not None:
            self.on_change(*p.span)

    # -- reusing removed patches' stubs (patch churn) ---------------------------------
    @staticmethod
    def _key(site: int, covered) -> tuple:
        return site, tuple((i.addr, bytes(i.data)) for i in covered)

    def _retire(self, p: Patch) -> None:
        """Keep a removed jump patch's stub: the same guest bytes at the same site
        make the same stub (its code depends on nothing else that can change while
        the cache stays where it is, and a move relocates retired stubs too).
        Beyond RETIRED_STUB_BYTES the least recently removed are freed."""
        old = self._retired.pop(self._key(p.site, p.covered), None)
        if old is not None:             # an older stub for the same bytes: this one replaces it
            self._free(old)
        self._retired[self._key(p.site, p.covered)] = p
        self._retired_bytes += p.stub_size
        while self._retired_bytes > RETIRED_STUB_BYTES:
            self._free(self._retired.popitem(last=False)[1])

    def _free(self, p: Patch) -> None:
        """A retired stub (already out of `_retired`) gives its space back."""
        self._retired_bytes -= p.stub_size
        self.cache.free(p.stub, p.stub_size)
        if self.on_free is not None:
            self.on_free(p.stub, p.stub + p.stub_size)
        self.counters.add("stubs_freed")

    def _reuse(self, site: Insn, covered: list[Insn]) -> Patch | None:
        """The retired patch for exactly these guest bytes at this site, if any: no
        assembly and no new stub bytes (its instruction-start marks are still in
        place).  The bytes under the jump are checked again: they are the first
        of the covered instructions' bytes, so they match."""
        p = self._retired.pop(self._key(site.addr, covered), None)
        if p is None:
            return None
        if self._read(site.addr, JMP_SIZE) != p.orig:
            self._free(p)
            return None
        self._retired_bytes -= p.stub_size
        p.enabled = True
        self._apply_variants(p)
        self.counters.add("stub_reuses")
        return p

    @property
    def retired(self) -> int:
        return len(self._retired)

    # -- the guest's IOPL -----------------------------------------------------------
    def set_iopl(self, iopl: int) -> None:
        """The guest's IOPL is now `iopl`: the stubs assembled for the old one
        must not run again.  Their IOPL-dependent bytes are rewritten in place
        (same length for every IOPL: patcher/templates.py IOPL_TEMPLATES), so a
        stub the guest is inside of -- the popf(d) whose exit changed the IOPL
        resumes after it in the same stub -- goes on with the new bytes.  Stubs
        of removed patches kept for reuse are rewritten when reused."""
        if iopl == self.iopl:
            return
        self.iopl = iopl
        self.counters.add("iopl_changes")
        for p in self.patches.values():
            self._apply_variants(p)

    def set_ring3_tests(self) -> None:
        """From now on pushf(d) stubs may run at CPL 3 with a real IOPL other
        than 1 (the runtime says when: runtime/bt.py): their entries jump to
        the ring-3 tail that tests the CPL.  Before, the stubs run the CPL-1
        code straight away, about 100 ns less a pushf(d) (docs/benchmarks.md,
        "Flag stubs without state-page accesses").  For good: never undone."""
        if self.ring3_tests:
            return
        self.ring3_tests = True
        self.counters.add("ring3_tests")
        for p in self.patches.values():
            self._apply_variants(p)

    def _apply_variants(self, p: Patch) -> None:
        """Bring a stub's IOPL bytes and pushf(d) entries to the current state."""
        changed = False
        if p.iopl_bytes and p.iopl != self.iopl:
            for addr, values in p.iopl_bytes:
                self.cache.uc.mem_write(addr, values[self.iopl:self.iopl + 1])
            p.iopl = self.iopl
            self.counters.add("iopl_rewrites")
            changed = True
        if p.ring3_entries and p.ring3 != self.ring3_tests:
            for addr, plain, jump in p.ring3_entries:
                self.cache.uc.mem_write(addr, jump if self.ring3_tests else plain)
            p.ring3 = self.ring3_tests
            changed = True
        if changed:
            self._flush(p.stub, p.stub + p.stub_size)

    # -- moving the stub cache --------------------------------------------------------
    def relocate(self, delta: int) -> None:
        """The stub cache moved by `delta` (its bytes and fixups already moved:
        StubCache.relocate): move every patch's stub, exit and stub-map addresses."""
        for p in list(self.patches.values()) + list(self._retired.values()) + [p for p, _ in self.lifted.values()]:
            if p.stub:
                p.stub += delta
                p.exits = {a + delta: e for a, e in p.exits.items()}
                p.stub_map = [(lo + delta, hi + delta, g) for lo, hi, g in p.stub_map]
                p.iopl_bytes = tuple(((a + delta) & 0xFFFFFFFF, v) for a, v in p.iopl_bytes)
                p.ring3_entries = tuple(((a + delta) & 0xFFFFFFFF, n, j) for a, n, j in p.ring3_entries)
                p.tails = tuple((lo + delta, hi + delta, g) for lo, hi, g in p.tails)
            if p.kind == "jump":
                self._flush(p.site, p.site + JMP_SIZE)
        self.state_addr += delta
        self._stub_index = None

    def stats(self) -> dict:
        return self.counters.report(enabled=len(self.patches), stub_cache_bytes=self.cache.used,
                                    stub_cache_free_bytes=self.cache.free_bytes, retired_stubs=len(self._retired))


_PAIRS = (("jo", "jno"), ("jb", "jae"), ("je", "jne"), ("jbe", "ja"), ("js", "jns"), ("jp", "jnp"),
          ("jl", "jge"), ("jle", "jg"))
_INVERSE = {a: b for a, b in _PAIRS} | {b: a for a, b in _PAIRS}


_CSD = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_CSD.detail = True
# Template instructions that touch the stack without a memory operand.
_STACK = {"push", "pop", "pushf", "pushfd", "popf", "popfd", "iretd", "iret", "call", "ret", "retf"}


def _memory_operands(code: bytes, at: int):
    for i in _CSD.disasm(code, at):
        mems = [op.mem for op in i.operands if op.type == capstone.x86.X86_OP_MEM] if i.mnemonic != "lea" else []
        yield i, mems


def _guest_accesses(code: bytes, at: int, guest: Insn) -> list[tuple[int, int]]:
    """Stub ranges of a template's instructions that access guest memory on the
    guest's behalf: its stack (push/pop, [esp + n]) and the guest instruction's
    own memory operand (same segment, base, index and scale, a displacement up to
    8 bytes further); the others reach the state page or a lookup table.  The
    hypervisor area's guard (runtime/isolation.py) takes the marked ones for the
    guest's, so `mov ds, [area]` or a pushfd with ESP in the area ends the run
    as under emulate instead of reading or writing the VMM."""
    own = [(m.segment, m.base, m.index, m.scale, m.disp & 0xFFFFFFFF)
           for _, mems in _memory_operands(guest.data, guest.addr) for m in mems]
    out = []
    for i, mems in _memory_operands(code, at):
        hit = i.mnemonic in _STACK
        for m in mems:
            d = m.disp & 0xFFFFFFFF
            hit |= m.base == capstone.x86.X86_REG_ESP or any(
                (m.segment, m.base, m.index, m.scale) == o[:4] and 0 <= (d - o[4]) & 0xFFFFFFFF < 8 for o in own)
        if hit:
            out.append((i.address, i.address + i.size))
    return out


# texts for IOPL 0..3 -> (length, [(offset, the byte for each IOPL)]): the
# texts name no site (one label prefix), so every patch of the same template
# form hits, and Keystone runs three more times per form instead of per site.
_VARIANTS: dict[tuple, tuple[int, list]] = {}


def _iopl_variants(part: bytes, at: int, iopl: int, texts: tuple) -> list[tuple[int, bytes]]:
    """The bytes of a template's code `part` (assembled at `at` for guest IOPL
    `iopl`) that differ between its texts for IOPL 0..3: (address, the byte for
    each IOPL).  The four must have one length (patcher/templates.py
    IOPL_TEMPLATES); the IOPL-dependent bytes are constants, not addresses, so
    they do not depend on `at` (checked against `part`)."""
    known = _VARIANTS.get(texts)
    if known is None:
        codes = [assemble(t, at) for t in texts]
        if len({len(c) for c in codes}) != 1:
            raise AssemblyError(f"an IOPL template whose length depends on the IOPL: {texts[0]}")
        known = (len(codes[0]), [(i, bytes(c[i] for c in codes)) for i in range(len(codes[0]))
                                 if len({c[i] for c in codes}) > 1])
        if len(_VARIANTS) < 4096:
            _VARIANTS[texts] = known
    size, variants = known
    if size != len(part) or any(part[i] != values[iopl] for i, values in variants):
        raise AssemblyError(f"IOPL variants that do not match the stub: {texts[0]}")
    return [(at + i, values) for i, values in variants]


def _exit_addresses(code: bytes, at: int) -> list[int]:
    return [i.address for i in _CS.disasm(code, at) if i.mnemonic == EXIT]
