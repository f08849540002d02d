"""The stub cache: patch code in the hypervisor area, and the fixups that let
the area move.

Stubs are assembled by Keystone at their final address.  Afterwards every
4-byte field that depends on where the hypervisor area lies is found with
capstone's operand offsets and recorded as a fixup:
  * `abs`: an absolute address inside the area (state-page fields),
  * `rel`: a rel32 displacement from stub code to guest code (jumps back,
    relocated branches), which changes when the stub moves and the guest
    does not,
plus, per patch, the guest->stub `jmp rel32` written into guest code (a `rel`
fixup living in guest memory).  `relocate(new_base)` rewrites all of them.

Space is allocated at the end (`used` grows) or, first, from blocks given back
with `free` (a stub whose patch will not come back: patcher/patches.py evicts
removed patches' stubs beyond a bound), so a guest that keeps rewriting its
code does not grow the cache without bound.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import capstone
from keystone import Ks, KsError, KS_ARCH_X86, KS_MODE_32

from bt.hyper_layout import HYPER_SIZE, STUBS, STUBS_SIZE

_KS = Ks(KS_ARCH_X86, KS_MODE_32)
_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_CS.detail = True


class StubCacheFull(Exception):
    pass


class AssemblyError(Exception):
    pass


@dataclass
class Fixup:
    where: int        # address of the 4-byte field
    kind: str         # abs | rel


def assemble(text: str, address: int) -> bytes:
    try:
        encoding, _ = _KS.asm(text, address)
    except KsError as e:
        raise AssemblyError(f"{e}: {text}") from None
    return bytes(encoding or b"")


def find_fixups(code: bytes, address: int, hyper_base: int) -> list[Fixup]:
    """Fields in `code` (assembled at `address`) that depend on the area's base."""
    lo, hi = hyper_base, hyper_base + HYPER_SIZE
    out = []
    for ins in _CS.disasm(code, address):
        enc = ins.disp_offset, ins.imm_offset
        if ins.disp_offset and ins.disp_size == 4 and lo <= (ins.disp & 0xFFFFFFFF) < hi:
            out.append(Fixup(ins.address + ins.disp_offset, "abs"))
        if ins.imm_offset and ins.imm_size == 4:
            imm = ins.operands[-1].imm & 0xFFFFFFFF if ins.operands else None
            is_branch = ins.group(capstone.CS_GRP_JUMP) or ins.group(capstone.CS_GRP_CALL)
            if is_branch:
                if not lo <= imm < hi:            # a branch from the stub to guest code
                    out.append(Fixup(ins.address + ins.imm_offset, "rel"))
            elif imm is not None and lo <= imm < hi:
                out.append(Fixup(ins.address + ins.imm_offset, "abs"))
        del enc
    return out


@dataclass
class StubCache:
    uc: object
    base: int                  # hypervisor area base
    used: int = 0
    fixups: list[Fixup] = field(default_factory=list)
    # Per stub byte: how many guest instructions' stub ranges start there (each
    # patch's stub_map `lo`).  The instruction clock (runtime/_clock.c) weighs
    # stub instructions by it, so a stub counts the guest instructions it
    # translates.  Indexed from `start`, so it survives relocation; never resized
    # (the clock holds its buffer).
    starts: bytearray = field(default_factory=lambda: bytearray(STUBS_SIZE))
    # Sites of the guest->stub jumps (their rel32 moves with the area); a set, so
    # removing one is O(1) whatever the number of stubs.
    guest_jumps: set = field(default_factory=set)
    # Freed blocks, (offset from `start`, size), reused first-fit by `reserve`.
    free_blocks: list = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.base + STUBS

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.start + STUBS_SIZE

    def reserve(self, size: int) -> int:
        """Space for `size` bytes: a freed block it fits in, else at the end."""
        need = (size + 15) & ~15
        for i, (off, n) in enumerate(self.free_blocks):
            if n >= need:
                if n == need:
                    del self.free_blocks[i]
                else:
                    self.free_blocks[i] = (off + need, n - need)
                return self.start + off
        return self.reserve_end(size)

    def reserve_end(self, size: int) -> int:
        if self.used + size > STUBS_SIZE:
            raise StubCacheFull(f"stub cache full ({STUBS_SIZE} bytes)")
        addr = self.start + self.used
        self.used += (size + 15) & ~15
        return addr

    def next_free(self, size: int) -> int | None:
        """Where `reserve(size)` would take a freed block (None: at the end)."""
        need = (size + 15) & ~15
        return next((self.start + off for off, n in self.free_blocks if n >= need), None)

    def free(self, addr: int, size: int) -> None:
        """Give a stub's space back: its fixups and instruction-start marks go
        (the bytes stay until the space is reused; the caller drops translations)."""
        off, n = addr - self.start, (size + 15) & ~15
        self.fixups = [f for f in self.fixups if not addr <= f.where < addr + n]
        self.starts[off:off + n] = bytes(n)
        self.free_blocks.append((off, n))
        self.free_blocks.sort()
        merged: list = []
        for o, m in self.free_blocks:           # adjacent blocks become one
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + m)
            else:
                merged.append((o, m))
        self.free_blocks = merged

    @property
    def free_bytes(self) -> int:
        return sum(n for _o, n in self.free_blocks)

    def write(self, addr: int, code: bytes, exclude=frozenset()) -> None:
        """Write a stub and record its fixups, except fields overlapping the
        byte addresses in `exclude`: constants that only look like area
        addresses (a pushf(d) stub's lea adds 0xFFFFF000, which lies in an area
        based at 0xFFC00000; patcher/patches.py rewrites those bytes itself)."""
        self.uc.mem_write(addr, code)
        self.fixups.extend(f for f in find_fixups(code, addr, self.base)
                           if not any(a in exclude for a in range(f.where, f.where + 4)))

    def mark_starts(self, stub_map) -> None:
        """Publish where each guest instruction's stub range begins (several
        guest instructions may begin at one byte when a template is empty)."""
        for lo, _hi, _guest in stub_map:
            off = lo - self.start
            if 0 <= off < STUBS_SIZE:
                self.starts[off] = min(self.starts[off] + 1, 255)

    def add_guest_jump(self, site: int) -> None:
        self.guest_jumps.add(site)

    def drop_guest_jump(self, site: int) -> None:
        self.guest_jumps.discard(site)

    def relocate(self, new_base: int, read_guest, write_guest) -> None:
        """Move every stub-area dependency by (new_base - base).  The caller has
        already mapped the new area and copied the old one's bytes there."""
        delta = (new_base - self.base) & 0xFFFFFFFF
        moved = []
        for site in self.guest_jumps:
            v = struct.unpack("<I", read_guest(site + 1, 4))[0]
            write_guest(site + 1, struct.pack("<I", (v + delta) & 0xFFFFFFFF))
        for f in self.fixups:
            where = (f.where + delta) & 0xFFFFFFFF
            v = struct.unpack("<I", bytes(self.uc.mem_read(where, 4)))[0]
            if f.kind == "abs":
                v = (v + delta) & 0xFFFFFFFF
            else:   # stub -> guest displacement: the source moved, the target did not
                v = (v - delta) & 0xFFFFFFFF
            self.uc.mem_write(where, struct.pack("<I", v))
            moved.append(Fixup(where, f.kind))
        self.fixups = moved
        self.base = new_base
