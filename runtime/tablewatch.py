"""Guest stores into the guest's GDT, seen by write hooks ranged on the table's
own bytes (not on the pages that hold it).

Trap and bt keep a shadow GDT (runtime/trap.py).  Watching the guest's table
by page protection made every store to its *page* an exit into the VMM: Debian's
decompressor keeps its GDT next to data it writes (1.75 M exits,
docs/benchmarks.md "Stores next to the GDT").  A UC_HOOK_MEM_WRITE is matched on
physical addresses (tests/runtime/test_unicorn_paging_facts.py) and fires
only for stores inside its range (tests/runtime/test_gdt_watch.py), so one hook
per physically contiguous run of the table fires for the table's bytes only.  It fires *before* the store lands
(tests/runtime/test_gdt_watch.py, the fact test), with the stored value: the
owner overlays that value on the table and updates the shadow descriptor at
once, so the very next selector load already sees it.  No exit, no stop.

Each range starts 15 bytes early: Unicorn matches a store that crosses into a
range by its first byte (the same reason as the read pair in runtime/_clock.c).
"""
from __future__ import annotations

from unicorn import UC_HOOK_MEM_WRITE

from bt.x86 import PAGE

EARLY = 15          # the widest store that can start before the table and reach into it, less one


class TableWatch:
    """Keeps hooks on the physical runs of a linear table and reports stores into
    it as (table offset, bytes) to `on_store`."""

    def __init__(self, uc, wrap, on_store):
        self.uc = uc
        self._wrap = wrap               # vm.guarded: no exception escapes a hook
        self.on_store = on_store
        self.runs: list[tuple[int, int, int]] = []   # (physical start, physical end excl., table offset)
        self._hooks: list[int] = []
        self.rehooks = 0                # how many times the hooks were replaced

    def watch(self, base: int, size: int, translate) -> None:
        """Watch the table [base, base + size) (linear); `translate(linear)` gives
        the physical address or None where the table is not mapped in RAM."""
        runs: list[list[int]] = []
        off = 0
        while off < size:
            lin = base + off
            n = min(size - off, PAGE - (lin & (PAGE - 1)))
            phys = translate(lin)
            if phys is not None:
                if runs and runs[-1][1] == phys and runs[-1][2] + (runs[-1][1] - runs[-1][0]) == off:
                    runs[-1][1] += n
                else:
                    runs.append([phys, phys + n, off])
            off += n
        new = [tuple(r) for r in runs]
        if new == self.runs:
            return
        self.clear()
        self.runs = new
        self.rehooks += 1
        for lo, hi, _ in new:
            self._hooks.append(self.uc.hook_add(UC_HOOK_MEM_WRITE, self._wrap(self._on_write),
                                                begin=max(0, lo - EARLY), end=hi - 1))

    def clear(self) -> None:
        for h in self._hooks:
            self.uc.hook_del(h)
        self._hooks = []
        self.runs = []

    def _on_write(self, access, address, size, value):
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        for lo, hi, off0 in self.runs:
            a, b = max(address, lo), min(address + size, hi)
            if a < b:
                self.on_store(off0 + a - lo, data[a - address:b - address])
