"""The virtual CPU: what the deprivileged guest believes about the CPU.

Its fields live in the hypervisor area's state page and nowhere else: the
runtime reads and writes them there, and the patcher's stubs (guest code in
ring 1) read and write the same bytes.  One source of truth, no copy to drift.
The layout (`FIELDS`, `VFLAGS_MASK`) is bt/hyper_layout.py, read by both sides
(stub templates name fields, never offsets).
"""
from __future__ import annotations

import ctypes
import struct

from bt.hyper_layout import FIELDS, VFLAGS_MASK


class VirtualCPU:
    def __init__(self, uc, state_addr: int, host_addr: int):
        self.uc = uc
        self.state_addr = state_addr
        # on_iopl(vflags): called when the guest's IOPL changes (bt rewrites its
        # flag stubs, which are assembled for one IOPL: runtime/bt.py).  Only
        # the VMM writes vflags: no stub stores it.
        self.on_iopl = None
        self.rebind(host_addr)

    def rebind(self, host_addr: int) -> None:
        """The state page's host address (the hypervisor area is host memory)."""
        self.host_addr = host_addr
        self._vflags = ctypes.c_uint32.from_address(host_addr + FIELDS["vflags"][0])
        self.msrs: dict[int, int] = {}
        self.tsc_offset = 0

    def field_addr(self, name: str) -> int:
        return self.state_addr + FIELDS[name][0]

    def get(self, name: str):
        off, fmt = FIELDS[name]
        vals = struct.unpack_from(fmt, (ctypes.c_char * struct.calcsize(fmt)).from_address(
            self.host_addr + off))
        return vals[0] if len(vals) == 1 else vals

    def set(self, name: str, *values) -> None:
        off, fmt = FIELDS[name]
        struct.pack_into(fmt, (ctypes.c_char * struct.calcsize(fmt)).from_address(
            self.host_addr + off), 0, *values)

    # Convenience accessors for the hot fields.
    @property
    def vflags(self) -> int:
        return self._vflags.value

    @vflags.setter
    def vflags(self, value: int) -> None:
        value &= VFLAGS_MASK
        if value != self._vflags.value:
            self._vflags.value = value
            if self.on_iopl is not None:
                self.on_iopl(value)

    def gdtr(self) -> tuple[int, int]:
        limit, base = self.get("gdtr")
        return base, limit

    def idtr(self) -> tuple[int, int]:
        limit, base = self.get("idtr")
        return base, limit

    def snapshot(self) -> dict:
        out = {}
        for name in ("vflags", "cr0", "cr2", "cr3", "cr4", "ldtr", "tr"):
            out[name] = self.get(name)
        base, limit = self.gdtr()
        out["gdtr"] = (base, limit)
        base, limit = self.idtr()
        out["idtr"] = (base, limit)
        return out
