"""Patch planning and installation (PATM).

A sensitive instruction at a scanned site becomes either
  * a *jump patch*: a 5-byte `jmp rel32` over the site into a stub that
    translates the site and the instructions after it that the jump covers
    (relocated, with relative branches re-encoded), then jumps back; or
  * an *int3 patch* (the fallback, as PATM's int3 replacement): the first byte
    becomes 0xCC and the VMM emulates the original instruction on the #BP exit.
A jump is refused (reason counted) when the CFG shows a branch target inside
the covered bytes, when the 5 bytes cross a page boundary (every code page is
write-monitored), when a covered byte was not scanned, or when a covered
instruction cannot run from the stub cache (it needs the VMM, or its meaning
depends on where it executes).
Guest reads of code see the patch bytes (as under PATM); a guest *write* to a
code page removes its patches first, so the guest then reads its own bytes.
"""
from __future__ import annotations

import bisect
import enum
import struct
from dataclasses import dataclass, field

import capstone

from bt.catalog import Klass, classify_bytes
from bt.x86 import PAGE
from patcher.stubcache import AssemblyError, StubCache, StubCacheFull, assemble
from patcher.templates import (EMULATE_EXITS, ENABLES_INTERRUPTS, EXIT, TEMPLATES, TERMINATORS,
                               Insn, StubContext, window_check)

JMP_SIZE = 5

_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


class Refusal(str, enum.Enum):
    BRANCH_TARGET_INSIDE = "branch-target-inside"
    PAGE_BOUNDARY = "page-boundary"
    UNSCANNED = "unscanned-bytes"
    NEEDS_VMM = "needs-vmm"
    UNRELOCATABLE = "unrelocatable-instruction"
    ASSEMBLY = "assembly-error"
    CACHE_FULL = "stub-cache-full"
    OVERLAPS_PATCH = "overlaps-patch"
    EXIT_INSIDE = "exit-point-inside"


# Instructions that must not run from the stub cache when relocated: they need
# the VMM, fault on purpose, or push/compare an address that would be a stub address.
_NOT_RELOCATABLE = {"hlt", "int", "int3", "into", "int1", "ud2", "div", "idiv", "bound",
                    "loop", "loope", "loopne", "jecxz", "jcxz", "in", "out", "insb", "insw",
                    "insd", "outsb", "outsw", "outsd", "lcall", "ljmp", "retf", "iretd", "iret",
                    "sysenter", "sysexit", "syscall", "cpuid", "rdtsc"}


def template_key(mnemonic: str, op_str: str, data: bytes) -> str | None:
    """Which stub template translates this instruction, if any."""
    if mnemonic in TEMPLATES and mnemonic not in ("mov_from_cs", "mov_from_ss"):
        return mnemonic
    ops = [o.strip() for o in op_str.split(",")] if op_str else []
    if mnemonic == "mov" and len(ops) == 2 and ops[1] in ("cs", "ss"):
        return "mov_from_" + ops[1]
    if mnemonic == "push" and ops and ops[0] in ("cs", "ss") and data[0] != 0x66:
        return "push_" + ops[0]
    return None


def needs_translation(mnemonic: str, op_str: str, data: bytes) -> bool:
    entry = classify_bytes(data)
    return entry is not None and entry.klass in (Klass.PRIVILEGED, Klass.SENSITIVE_UNPRIVILEGED,
                                                 Klass.INTERRUPT, Klass.IO) \
        or template_key(mnemonic, op_str, data) is not None


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
    refused: str | None = None        # why a jump was refused (int3 patches)
    enabled: bool = True

    @property
    def span(self) -> tuple[int, int]:
        return self.site, self.site + len(self.orig)


class Patcher:
    """Plans, installs and removes patches; owns the stub cache."""

    def __init__(self, uc, cache: StubCache, state_addr: int, read, write, flush):
        self.uc = uc
        self.cache = cache
        self.state_addr = state_addr
        self._read = read          # read(addr, n) -> bytes (guest memory, as it is)
        self._write = write        # write(addr, bytes)
        self._flush = flush        # flush(lo, hi): drop translated blocks
        self.patches: dict[int, Patch] = {}
        self._stub_index: list[tuple[int, int]] | None = None   # (stub, site), sorted
        self._by_page: dict[int, set[int]] = {}
        self.installed: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.removed = 0
        self.superseded = 0
        self.int3_fallbacks = 0

    # -- queries -------------------------------------------------------------------
    def at(self, site: int) -> Patch | None:
        return self.patches.get(site)

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
        return bytes(out)

    def covering(self, addr: int) -> Patch | None:
        """The installed patch whose covered guest instructions include `addr`."""
        for page in {addr & ~(PAGE - 1), (addr - JMP_SIZE) & ~(PAGE - 1)}:
            for site in self._by_page.get(page, ()):
                p = self.patches.get(site)
                if p is not None and p.site <= addr < max(p.end, p.site + len(p.orig)):
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

    def stubs_moved(self) -> None:
        """Call after patch stub addresses change (relocation)."""
        self._stub_index = None

    def guest_address(self, eip: int) -> int:
        """Map an address inside a stub back to the guest instruction it translates."""
        p = self.stub_owner(eip)
        if p is None:
            return eip
        for lo, hi, guest in p.stub_map:
            if lo <= eip < hi:
                return guest
        return p.site

    # -- planning ------------------------------------------------------------------
    def plan(self, site: Insn, following: list[Insn], targets_inside) -> tuple[list[Insn], Refusal | None]:
        """Choose the instructions a jump at `site` covers, or say why it cannot."""
        if template_key(site.mnemonic, site.op_str, site.data) is None:
            return [], Refusal.NEEDS_VMM
        if (site.addr & ~(PAGE - 1)) != ((site.addr + JMP_SIZE - 1) & ~(PAGE - 1)):
            return [], Refusal.PAGE_BOUNDARY
        covered = [site]
        end = site.addr + site.size
        for ins in following:
            if end >= site.addr + JMP_SIZE or covered[-1].mnemonic in TERMINATORS \
                    or _ends_flow(covered[-1]):
                break
            if ins.addr != end:
                return [], Refusal.UNSCANNED
            covered.append(ins)
            end += ins.size
        if end < site.addr + JMP_SIZE:
            # The flow ends (ret/jmp/iretd) before 5 bytes: the jump would overwrite
            # bytes after it that an unknown computed branch (an iret frame, a
            # function pointer) may reach.  PATM refused these too.
            if covered[-1].mnemonic in TERMINATORS or _ends_flow(covered[-1]):
                return [], Refusal.EXIT_INSIDE
            return [], Refusal.UNSCANNED
        if targets_inside(site.addr + 1, end):
            return [], Refusal.BRANCH_TARGET_INSIDE
        if self.covering(site.addr) is not None:
            return [], Refusal.OVERLAPS_PATCH      # the site already runs translated
        # Patches that start inside the new coverage are superseded by it (their
        # instructions are translated inline by the new stub); see install().
        for ins in covered[1:]:
            key = template_key(ins.mnemonic, ins.op_str, ins.data)
            if key is not None:
                if key in EMULATE_EXITS:
                    return [], Refusal.NEEDS_VMM
                continue
            if needs_translation(ins.mnemonic, ins.op_str, ins.data):
                return [], Refusal.NEEDS_VMM
            if ins.mnemonic in _NOT_RELOCATABLE or (ins.mnemonic == "call" and not _direct(ins)):
                return [], Refusal.UNRELOCATABLE
        return covered, None

    # -- installing ------------------------------------------------------------------
    def install(self, site: Insn, following: list[Insn], targets_inside) -> Patch | None:
        covered, why = self.plan(site, following, targets_inside)
        if why is Refusal.OVERLAPS_PATCH:
            self.refused[why.value] = self.refused.get(why.value, 0) + 1
            return None
        if why is None:
            end = covered[-1].addr + covered[-1].size
            for other in [p for p in self.patches.values() if site.addr < p.site < end]:
                self._remove(other)
                self.superseded += 1
            try:
                patch = self._build_jump(site, covered)
            except AssemblyError:
                why = Refusal.ASSEMBLY
            except StubCacheFull:
                why = Refusal.CACHE_FULL
            else:
                self._enable(patch)
                return patch
        return self.install_int3(site, why)

    def install_int3(self, site: Insn, why: Refusal | None) -> Patch:
        name = template_key(site.mnemonic, site.op_str, site.data) or site.mnemonic
        orig = self._read(site.addr, 1)
        patch = Patch(site.addr, name, "int3", orig, covered=(site,),
                      end=site.addr + site.size, refused=why.value if why else None)
        if why is not None:
            self.refused[why.value] = self.refused.get(why.value, 0) + 1
        self.int3_fallbacks += 1
        self._write(site.addr, b"\xcc")
        self._flush(site.addr, site.addr + 1)
        self._register(patch)
        return patch

    def _build_jump(self, site: Insn, covered: list[Insn]) -> Patch:
        ctx = StubContext(self.state_addr, f"p{site.addr:x}")
        start = self.cache.start + self.cache.used
        cur = start
        code = bytearray()
        exits: dict = {}
        stub_map = []
        terminated = False
        end = covered[-1].addr + covered[-1].size
        enables = False
        for ins in covered:
            key = template_key(ins.mnemonic, ins.op_str, ins.data)
            if key is not None:
                text = TEMPLATES[key](ctx, ins)
                enables |= key in ENABLES_INTERRUPTS
                terminated |= key in TERMINATORS
                part = assemble(text, cur) if text else b""
                for a in _exit_addresses(part, cur):
                    exits[a] = ("emulate", ins.addr, None)
            else:
                part, terminated_here = self._relocate(ins, cur)
                terminated |= terminated_here
            stub_map.append((cur, cur + len(part), ins.addr))
            code += part
            cur += len(part)
            if terminated:
                break
        if not terminated:
            if enables:
                part = assemble(window_check(ctx), cur)
                for a in _exit_addresses(part, cur):
                    exits[a] = ("window", site.addr, end)
                code += part
                cur += len(part)
            part = assemble(f"jmp {end:#x}", cur)
            code += part
            cur += len(part)
        addr = self.cache.reserve(len(code))
        assert addr == start
        self.cache.write(addr, bytes(code))
        orig = self._read(site.addr, JMP_SIZE)
        return Patch(site.addr, template_key(site.mnemonic, site.op_str, site.data), "jump", orig,
                     tuple(covered), end, addr, len(code), exits, stub_map)

    def _relocate(self, ins: Insn, at: int) -> tuple[bytes, bool]:
        """Copy one covered instruction to the stub; re-encode relative branches."""
        m = ins.mnemonic
        if m.startswith("j") and _direct(ins):
            target = int(ins.op_str, 16)
            return assemble(f"{m} {target:#x}", at), m == "jmp"
        if m == "call" and _direct(ins):
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
        self.patches[patch.site] = patch
        self._stub_index = None
        for page in {patch.site & ~(PAGE - 1), (patch.site + len(patch.orig) - 1) & ~(PAGE - 1)}:
            self._by_page.setdefault(page, set()).add(patch.site)
        self.installed[patch.name] = self.installed.get(patch.name, 0) + 1

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
            self.removed += 1
        return gone

    def _remove(self, p: Patch) -> None:
        self.patches.pop(p.site, None)
        self._stub_index = None
        self._write(p.site, p.orig)
        self._flush(p.site, p.site + len(p.orig))
        if p.kind == "jump":
            self.cache.drop_guest_jump(p.site)
        p.enabled = False
        for sites in self._by_page.values():
            sites.discard(p.site)

    def stats(self) -> dict:
        return {"installed": dict(sorted(self.installed.items())),
                "refused": dict(sorted(self.refused.items())),
                "removed": self.removed,
                "superseded": self.superseded,
                "int3_fallbacks": self.int3_fallbacks,
                "enabled": len(self.patches),
                "stub_cache_bytes": self.cache.used}


def _direct(ins: Insn) -> bool:
    try:
        int(ins.op_str, 16)
        return True
    except ValueError:
        return False


def _ends_flow(ins: Insn) -> bool:
    return ins.mnemonic in ("ret", "jmp", "retf", "iretd", "hlt", "ud2")


def _exit_addresses(code: bytes, at: int) -> list[int]:
    return [i.address for i in _CS.disasm(code, at) if i.mnemonic == EXIT]
