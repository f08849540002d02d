"""Unicorn's translation generation: two counters that move whenever translated
code may no longer match guest memory, found by calibration (runtime/quirks.py
style).  The instruction clock (runtime/_clock.c, "Blocks known unchanged")
skips reading and comparing a block's bytes when neither moved since it last
compared them at the same physical address.

* `tb_phys_invalidate_count` (a size_t in Unicorn's TCGContext): one more for
  every translated block invalidated -- by a guest store into its bytes (the
  self-modifying-code check, on pages that keep TLB_NOTDIRTY:
  runtime/faststores.h) and by `uc_ctl_remove_cache`.
* `tb_ctx.tb_flush_count` (an unsigned in the same TCGContext): one more per
  flush of every block (a full code buffer, `uc_ctl_flush_tb`).  Needed as
  well: after a flush a store into a code page invalidates nothing, so the
  bytes can change with the first counter still.

Found in three scratch engines as the one pointer in the uc_struct and the
offsets behind it where: three blocks removed one by one raise a size_t by 1
then 3 and leave it on two flushes; two flushes raise an unsigned by 1 then 2,
the first such field after the size_t within 64 KiB (the TCGContext).  Host
writes into code (uc_mem_write, the host pointer) move neither, as Unicorn does
not see them either: the clock then counts the translated block that runs.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from unicorn import UcError
from runtime.quirks import once_per_process


class TBGenError(RuntimeError):
    """Calibration could not find the counters."""


@dataclass(frozen=True)
class TBGen:
    link: int          # offset in the uc_struct of the pointer to the TCGContext
    invalidated: int   # offset of tb_phys_invalidate_count behind it (size_t)
    flushed: int       # offset of tb_ctx.tb_flush_count behind it (unsigned)


SPAN = 0x10000                  # the TCGContext: where the flush counter is looked for
NEAR = 0x1000                   # where the invalidation counter is looked for


def _candidates(uc) -> tuple[set, set]:
    """(link, offset) pairs that behave like the two counters in this engine.
    The invalidation counter is looked for in the first NEAR bytes behind each
    pointer of the uc_struct, the flush counter in SPAN bytes behind the
    pointers that lead to an invalidation counter only: reading 64 KiB behind
    every pointer five times made calibration take tens of seconds."""
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks
    from runtime.quirks import _peek
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    for at in (0x2000, 0x3000, 0x4000):
        uc.mem_write(at, bytes(ks.asm("mov eax, 1; hlt", at)[0]))
        try:
            uc.emu_start(at, 0)
        except UcError:
            pass
    uc_addr = ctypes.cast(uc._uch, ctypes.c_void_p).value
    raw = _peek(uc_addr, 4096)
    ptrs = [(o, struct.unpack_from("<Q", raw, o)[0]) for o in range(0, len(raw) - 7, 8)]
    ptrs = [(o, p) for o, p in ptrs if 0x10000 <= p < 1 << 47]
    near = {o: [] for o, _ in ptrs}
    far = {}

    def snap():
        for o, p in ptrs:
            near[o].append(_peek(p, NEAR))
        for o in far:
            far[o].append(_peek(dict(ptrs)[o], SPAN))
    steps = (lambda: uc.ctl_remove_cache(0x2000, 0x2001),
             lambda: (uc.ctl_remove_cache(0x3000, 0x3001), uc.ctl_remove_cache(0x4000, 0x4001)))
    snap()
    for step in steps:
        step()
        snap()
    inv = set()
    for o, _ in ptrs:
        v = near[o]
        n = min(map(len, v))
        for k in range(0, n - 7, 8):
            x = [struct.unpack_from("<Q", b, k)[0] for b in v]
            if x[1] == x[0] + 1 and x[2] == x[0] + 3:
                inv.add((o, k))
    for o in {o for o, _ in inv}:
        far[o] = [_peek(dict(ptrs)[o], SPAN)]
    uc.ctl_flush_tb()
    for o in far:
        far[o].append(_peek(dict(ptrs)[o], SPAN))
    uc.ctl_flush_tb()
    for o in far:
        far[o].append(_peek(dict(ptrs)[o], SPAN))
    fl = set()
    for o, v in far.items():
        n = min(map(len, v))
        for k in range(0, n - 3, 4):
            x = [struct.unpack_from("<I", b, k)[0] for b in v]
            if x[1] == x[0] + 1 and x[2] == x[0] + 2:
                fl.add((o, k))
    # the invalidation counter stays put on the flushes
    inv = {(o, k) for o, k in inv if o in far and len({struct.unpack_from("<Q", b, k)[0] for b in far[o]}) == 1}
    return inv, fl


def _calibrate() -> TBGen:
    from runtime.quirks import _close_engines, scratch_engine
    engines = [scratch_engine(0x100000) for _ in range(3)]
    found = [_candidates(uc) for uc in engines]
    _close_engines(engines)
    inv = set.intersection(*(a for a, _ in found))
    fl = set.intersection(*(b for _, b in found))
    if len(inv) != 1:
        raise TBGenError(f"expected one invalidation counter, found {sorted(inv)}")
    (link, k1), = inv
    after = sorted(k for o, k in fl if o == link and k1 < k < k1 + SPAN)
    if not after:
        raise TBGenError(f"no flush counter after the invalidation counter ({sorted(fl)[:8]})")
    return TBGen(link, k1, after[0])


def _verify(g: TBGen) -> bool:
    """Cached counters still move as calibration saw them (runtime/calcache.py):
    one block removed raises the first by 1, one flush the second by 1."""
    from runtime.quirks import _close_engines, _peek, scratch_engine
    uc = scratch_engine(0x100000)
    try:
        uc.mem_write(0x2000, b"\xb8\x01\x00\x00\x00\xf4")     # mov eax, 1 ; hlt
        try:
            uc.emu_start(0x2000, 0)
        except UcError:
            pass
        raw = _peek(ctypes.cast(uc._uch, ctypes.c_void_p).value + g.link, 8)
        ctx = struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
        if not 0x10000 <= ctx < 1 << 47:
            return False

        def now():
            inv, fl = _peek(ctx + g.invalidated, 8), _peek(ctx + g.flushed, 4)
            return (struct.unpack("<Q", inv)[0] if len(inv) == 8 else None,
                    struct.unpack("<I", fl)[0] if len(fl) == 4 else None)
        i0, f0 = now()
        uc.ctl_remove_cache(0x2000, 0x2001)
        i1, f1 = now()
        uc.ctl_flush_tb()
        i2, f2 = now()
        return None not in (i0, f0) and (i1, f1) == (i0 + 1, f0) and (i2, f2) == (i1, f1 + 1)
    finally:
        alive = [uc]
        del uc                           # the list holds the last reference: closed right here
        _close_engines(alive)


def _cached() -> TBGen:
    from runtime import calcache
    return calcache.cached("tbgen", _calibrate, TBGen, _verify)


# The counters' place, found once per process (the calibration cache first);
# raises TBGenError (every time, once calibration has failed).
counters = once_per_process(_cached, TBGenError)


def addresses(uc) -> tuple[int, int]:
    """(address of the invalidation counter, address of the flush counter) of `uc`."""
    g = counters()
    uc_addr = ctypes.cast(uc._uch, ctypes.c_void_p).value
    ctx = ctypes.c_uint64.from_address(uc_addr + g.link).value
    if not ctx:
        raise TBGenError("the engine has no TCGContext yet")
    return ctx + g.invalidated, ctx + g.flushed
