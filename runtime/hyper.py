"""The hypervisor area: VMM memory inside the guest's address space, outside RAM.

One 4 MiB region (one page-directory entry, so a paging guest can be given it
with a single PDE later) whose base is a parameter (`MachineConfig.hyper_base`).
Nothing outside this module knows an absolute hypervisor address: everything asks
`HyperArea.addr(REGION)`, so the area can be relocated by changing the base and
re-applying the recorded fixups (patcher/fixups.py).

Layout (offsets from the base):
    STATE        one page: the virtual CPU state the stubs read and write
    SHADOW_IDT   the real IDTR points here; Unicorn never vectors through it, it
                 only has to exist (delivery reads the guest's own IDT)
    VMM_TSS      the real TR: a TSS whose I/O bitmap denies every port
    SHADOW_GDT   the ring-compressed copy of the guest GDT (64 KiB = 8192 entries)
    VMM_STACK    scratch stack for VMM trampolines
    SELECTOR_VIEW  a table mapping every real selector to the guest's view of it
                 (RPL 1 -> RPL 0), so stubs translate `mov r, cs` / `push cs`
                 with one load: no flags touched, no stack scratch
    STUBS        the stub cache (patcher), to the end of the area
"""
from __future__ import annotations

import ctypes
import mmap

from unicorn import UC_PROT_ALL, UC_PROT_READ, UC_PROT_EXEC

from bt.x86 import LARGE_PAGE

HYPER_SIZE = 0x400000

STATE = 0x0000
SHADOW_IDT = 0x1000
SHADOW_GDT = 0x2000
SHADOW_GDT_SIZE = 0x10000
VMM_TSS = 0x1800
VMM_STACK = 0x12000
VMM_STACK_SIZE = 0x1000
SELECTOR_VIEW = 0x20000      # 64 Ki x u16: real selector -> the selector the guest sees
SELECTOR_VIEW_SIZE = 0x20000
STUBS = 0x40000
STUBS_SIZE = HYPER_SIZE - STUBS


class HyperArea:
    def __init__(self, uc, base: int, ram_bytes: int):
        if base & (LARGE_PAGE - 1):
            raise ValueError(f"hypervisor base {base:#x} is not 4 MiB aligned")
        if base < ram_bytes:
            raise ValueError(f"hypervisor base {base:#x} overlaps guest RAM")
        self.uc = uc
        self.base = base
        self.map_at(base)

    def map_at(self, base: int) -> None:
        """Map the area at `base` over host memory the VMM owns, so the VMM reads
        and writes the state page directly (no Unicorn call on the exit path)."""
        self._mem = mmap.mmap(-1, HYPER_SIZE)
        self.host = ctypes.addressof(ctypes.c_char.from_buffer(self._mem))
        self.uc.mem_map_ptr(base, HYPER_SIZE, UC_PROT_ALL, self.host)

    def addr(self, offset: int) -> int:
        return self.base + offset

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + HYPER_SIZE

    def protect_stubs(self, writable: bool) -> None:
        """The selector table and the stub cache are read+execute for the guest (a
        guest store there is an isolation violation); the VMM writes them with
        uc.mem_write, which ignores guest protections."""
        prot = UC_PROT_ALL if writable else UC_PROT_READ | UC_PROT_EXEC
        self.uc.mem_protect(self.addr(SELECTOR_VIEW), HYPER_SIZE - SELECTOR_VIEW, prot)


def selector_view_table() -> bytes:
    """Ring compression undone: RPL 1 selectors read as RPL 0, others unchanged."""
    import array
    t = array.array("H", (sel & ~3 if sel & 3 == 1 else sel for sel in range(0x10000)))
    return t.tobytes()
