"""The hypervisor area: VMM memory inside the guest's address space, outside RAM.

`HyperArea` maps the area over host memory and answers `addr(REGION)`; the
layout itself (the regions, the state page's fields) is the contract the stubs
share with the VMM and lives in bt/hyper_layout.py.  Nothing outside these two
modules knows an absolute hypervisor address, so the area can be relocated by
changing the base and re-applying the fixups the stub cache records
(patcher/stubcache.py; runtime/bt.py `relocate_hyper`).
"""
from __future__ import annotations

import ctypes
import mmap

from unicorn import UC_PROT_ALL, UC_PROT_READ, UC_PROT_EXEC

from bt.hyper_layout import HYPER_SIZE, SELECTOR_VIEW
from bt.x86 import LARGE_PAGE


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
        self.protect_calls = getattr(self, "protect_calls", 0) + 1   # the report's figure
