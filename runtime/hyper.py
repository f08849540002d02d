"""The hypervisor area: VMM memory inside the guest's address space, outside RAM.

`HyperArea` maps the area over host memory and answers `addr(REGION)`; the
layout itself (the regions, the state page's fields) is the contract the stubs
share with the VMM and lives in bt/hyper_layout.py.  Nothing outside these two
modules knows an absolute hypervisor address, so the area can be relocated by
changing the base and re-applying the fixups the stub cache records
(patcher/stubcache.py; runtime/trap.py `relocate_hyper`, which bt extends).
"""
from __future__ import annotations

import ctypes
import mmap

from unicorn import UC_PROT_EXEC, UC_PROT_NONE

from bt.hyper_layout import HYPER_SIZE, STUBS
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
        and writes the state page directly (no Unicorn call on the exit path).

        The guest gets no permission on it: none below the stub cache, execute
        only in it.  Every access from guest code is then a protection event,
        which runtime/isolation.py's native hook allows for the stubs (and the
        CPU's descriptor lookups) and refuses otherwise, so the guest finds no
        memory there, as under emulate.  Two mappings with these permissions
        from the start, so no mem_protect call is ever made on the area."""
        self._mem = mmap.mmap(-1, HYPER_SIZE)
        self.host = ctypes.addressof(ctypes.c_char.from_buffer(self._mem))
        self.uc.mem_map_ptr(base, STUBS, UC_PROT_NONE, self.host)
        self.uc.mem_map_ptr(base + STUBS, HYPER_SIZE - STUBS, UC_PROT_EXEC, self.host + STUBS)

    @property
    def mem(self) -> mmap.mmap:
        """The area's host memory (offsets as in bt/hyper_layout.py): the VMM's
        writes there need no engine call, so they are safe inside a hook."""
        return self._mem

    def addr(self, offset: int) -> int:
        return self.base + offset

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + HYPER_SIZE
