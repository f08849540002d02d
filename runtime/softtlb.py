"""Unicorn's software TLB: where it lives, found by calibration (runtime/quirks.py style).

Why the VMM looks at it (issue 19): in Unicorn 2.1.4 every guest store to RAM
takes the engine's slow path (`helper_le_st*_mmu` -> `store_helper` ->
`notdirty_write` -> `tb_invalidate_phys_page_fast`, two region lookups through
`flatview_translate` on the way), whatever hooks exist.  Unicorn's dirty-memory
tracking is stubbed (`cpu_physical_memory_is_clean` is always true), so every
TLB fill of a writable RAM page sets TLB_NOTDIRTY in the entry's `addr_write`,
and `notdirty_write` clears it again only when the entry's `addr_code` is -1
(Unicorn's qemu/accel/tcg/cputlb.c; Unicorn commit ab23d4ce, "disable
notdirty_write for self modifying code").  An x86 page without NX always gets PAGE_EXEC, so
`addr_code` is never -1 and the flag is never cleared: a store-heavy guest
(Linux's xz decompressor) spends about half its time there.  QEMU proper keeps
the flag only on pages that hold translated code.  tests/runtime/test_store_facts.py
pins all of this in a bare engine.

The instruction clock (runtime/_clock.c, "Fast stores") does what QEMU does
from the outside: it clears TLB_NOTDIRTY on entries of RAM pages no executed
block lives on, and flushes the TLB when a page it cleared becomes code.

Layout (QEMU 5's cpu-defs.h, as Unicorn 2.1.4 builds it): the fast TLB
descriptors `CPUTLBDescFast f[NB_MMU_MODES]` (a mask `(n - 1) << entry_bits`
and a pointer to the table) are the last member of the CPUTLB that sits just
before the CPU state; an entry holds addr_read, addr_write, addr_code, paddr
(Unicorn's field) and addend.  Nothing is hard-coded: calibration stores
through two pages of a scratch engine whose RAM is host memory it owns and
keeps the descriptors and field offsets under which both stores' entries read
back exactly as predicted (page | TLB_NOTDIRTY, the physical page, host -
virtual).
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from unicorn import UcError
from unicorn import x86_const as X
from runtime.quirks import once_per_process

TLB_NOTDIRTY = 1 << 10          # QEMU's TLB_NOTDIRTY for TARGET_PAGE_BITS_MIN 12 (cpu-all.h)
TLB_FLAGS = 0xFFF               # the flag bits below the page (TLB_INVALID_MASK ... TLB_DISCARD_WRITE)


class TLBError(RuntimeError):
    """Calibration could not find the software TLB."""


@dataclass(frozen=True)
class TLBLayout:
    fast: int          # offset of f[0] from the calibrated CPU-state address (Quirks.env)
    modes: int         # NB_MMU_MODES: descriptors f[0 .. modes-1]
    entry_bits: int    # log2 of an entry's size
    write: int         # offset of addr_write in an entry
    code: int          # offset of addr_code
    paddr: int         # offset of Unicorn's paddr (the physical page)
    addend: int        # offset of addend (host address - virtual address)




def _state_delta(uc, env: int) -> int:
    """EAX's offset from Quirks.env (the CPU state proper begins with EAX)."""
    uc.reg_write(X.UC_X86_REG_EAX, 0x5AC39A11)
    off = bytes(uc.context_save()).find(struct.pack("<Q", 0x5AC39A11))
    if off < 0:
        raise TLBError("EAX not found in a context save")
    return off


def _plausible(mask: int, table: int) -> int | None:
    """entry_bits when (mask, table) looks like a CPUTLBDescFast, else None."""
    if not mask or table < 0x10000 or table >= 1 << 47 or table % 8:
        return None
    low = mask & -mask
    bits = low.bit_length() - 1
    n = (mask >> bits) + 1
    if bits not in (5, 6, 7) or n & (n - 1) or not 64 <= n <= 1 << 22:
        return None
    return bits


def _calibrate() -> TLBLayout:
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks

    from runtime.quirks import Quirks, _close_engines, _peek, scratch_engine

    uc = scratch_engine(0x100000, host_backed=True)
    buf, host = uc.host_buf, uc.host_ram
    pages = (0x45000, 0x67000)
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(
        "".join(f"mov dword ptr [{p:#x}], {i + 1}; " for i, p in enumerate(pages)) + "hlt", 0x1000)[0])
    uc.mem_write(0x1000, code)
    try:
        uc.emu_start(0x1000, 0)
    except UcError:
        pass
    q = Quirks(uc)
    if q.env is None:
        raise TLBError(f"the live CPU state was not found ({q.env_problem})")
    delta = _state_delta(uc, q.env)
    state = q.env + delta
    span = 1024
    raw = _peek(state - span, span)
    found = []
    for o in range(0, len(raw) - 15, 16):
        mask, table = struct.unpack_from("<QQ", raw, o)
        bits = _plausible(mask, table)
        if bits is None:
            continue
        ents = []
        for p in pages:
            e = _peek(table + (((p >> 12) & (mask >> bits)) << bits), 1 << bits)
            ents.append(struct.unpack_from(f"<{len(e) // 8}Q", e))
        n = min(len(e) for e in ents)
        pick = lambda want: [8 * i for i in range(n) if all(e[i] == want(p, pg) for e, p, pg in
                                                             zip(ents, pages, (host + pg for pg in pages)))]
        write = pick(lambda p, h: p | TLB_NOTDIRTY)
        page = pick(lambda p, h: p)          # addr_read, addr_code and paddr all hold the page
        addend = pick(lambda p, h: h - p)
        if len(write) == 1 and len(page) == 3 and len(addend) == 1:
            found.append((o - span, bits, write[0], page, addend[0]))
    q = None
    _close_engines([uc])
    del uc
    buf.close()
    if len(found) != 1:
        raise TLBError(f"expected one TLB descriptor holding both stores' entries, found {len(found)}")
    rel, bits, write, page, addend = found[0]
    read, code_off, paddr = page            # the struct's order: addr_read, addr_write, addr_code, paddr
    if not read < write < code_off < paddr:
        raise TLBError(f"unexpected entry layout: read {read} write {write} code {code_off} paddr {paddr}")
    # The other modes' descriptors: contiguous, 16 bytes each, just before the state.
    first = last = rel
    while first - 16 >= -span and _plausible(*struct.unpack_from("<QQ", raw, span + first - 16)) == bits:
        first -= 16
    while last + 16 < 0 and _plausible(*struct.unpack_from("<QQ", raw, span + last + 16)) == bits:
        last += 16
    return TLBLayout(first + delta, (last - first) // 16 + 1, bits, write, code_off, paddr, addend)


def _verify(lay: TLBLayout) -> bool:
    """A cached layout still holds (runtime/calcache.py): after one store in a
    scratch engine with host RAM, every one of `modes` descriptors (and not the
    one after them) looks like a descriptor, and exactly one leads to an entry
    whose addr_write, addr_code, paddr and addend read as calibration predicts."""
    from runtime.quirks import Quirks, _close_engines, _peek, scratch_engine
    uc = scratch_engine(0x100000, host_backed=True)
    buf, host, page = uc.host_buf, uc.host_ram, 0x45000
    q = None
    try:
        # mov dword ptr [0x45000], 1 ; hlt
        uc.mem_write(0x1000, bytes.fromhex("c70500500400" "01000000" "f4"))
        try:
            uc.emu_start(0x1000, 0)
        except UcError:
            pass
        q = Quirks(uc)
        if q.env is None:
            return False
        hits = 0
        for m in range(lay.modes + 1):         # every descriptor, and none after the last
            raw = _peek(q.env + lay.fast + 16 * m, 16)
            if len(raw) != 16:
                return False
            mask, table = struct.unpack("<QQ", raw)
            if m == lay.modes:
                return hits == 1 and (lay.fast + 16 * m >= 0 or _plausible(mask, table) != lay.entry_bits)
            if _plausible(mask, table) != lay.entry_bits:
                return False
            e = _peek(table + (((page >> 12) & (mask >> lay.entry_bits)) << lay.entry_bits),
                      1 << lay.entry_bits)
            if len(e) != 1 << lay.entry_bits:
                return False
            field = lambda at: struct.unpack_from("<Q", e, at)[0]
            hits += (field(lay.write), field(lay.code), field(lay.paddr), field(lay.addend)) == \
                (page | TLB_NOTDIRTY, page, page, host)
    finally:
        q = None
        alive = [uc]
        del uc                           # the list holds the last reference: closed right here
        _close_engines(alive)
        buf.close()


def _cached() -> TLBLayout:
    from runtime import calcache
    return calcache.cached("softtlb", _calibrate, TLBLayout, _verify)


# The software TLB's layout, found once per process (the calibration cache
# first); raises TLBError (every time, without trying again, once calibration
# has failed).
layout = once_per_process(_cached, TLBError)


def entries(env: int, lay: TLBLayout | None = None):
    """(mode, index, addr_write, addr_code, paddr, addend, address of addr_write) for
    every valid entry of the live TLB (fact tests and debugging; the clock reads it in C)."""
    lay = lay or layout()
    out = []
    for m in range(lay.modes):
        mask, table = struct.unpack("<QQ", ctypes.string_at(env + lay.fast + 16 * m, 16))
        for i in range((mask >> lay.entry_bits) + 1):
            e = table + (i << lay.entry_bits)
            w, c, p, a = (ctypes.c_uint64.from_address(e + off).value
                          for off in (lay.write, lay.code, lay.paddr, lay.addend))
            if w != 2 ** 64 - 1 or c != 2 ** 64 - 1:
                out.append((m, i, w, c, p, a, e + lay.write))
    return out
