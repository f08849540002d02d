"""Direct ctypes calls into libunicorn for the VMM's hot paths.

The Python binding's reg_read/mem_read pick a register class, allocate a buffer
and build a bytearray on every call (about 5-6 us each on this machine).  An
exit reads and writes a handful of registers, so the exit path uses these
pre-bound calls instead (about 2 us each).  Only plain 32-bit registers and
small memory accesses go through here; everything else uses the binding.
"""
from __future__ import annotations

import ctypes

from unicorn import UcError
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

# uc_ctl's request word for a TLB flush without arguments, encoded as
# unicorn.h's UC_CTL(type, nr, rw) does: rw << 30 | nr << 26 | type.
TLB_FLUSH = UC_CTL_IO_WRITE << 30 | 0 << 26 | UC_CTL_TLB_FLUSH


def hook_add(uc, kind: int, fn: int, user: int | None, begin: int, end: int, *extra) -> int:
    """uc_hook_add with a C function address (ours or a ctypes callback's), bypassing
    the binding's Python dispatcher; `extra` is the instruction id of UC_HOOK_INSN.
    Delete with uclib.uc_hook_del, not Uc.hook_del (the binding does not know it)."""
    handle = uc_hook_h()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), kind, ctypes.c_void_p(fn),
                               ctypes.c_void_p(user), ctypes.c_uint64(begin),
                               ctypes.c_uint64(end), *extra)
    if status:
        raise UcError(status)
    return handle.value


class FastUc:
    def __init__(self, uc):
        self.uc = uc
        self._h = uc._uch
        self._val = ctypes.c_uint64(0)
        self._ref = ctypes.byref(self._val)
        self._buf = ctypes.create_string_buffer(4096)
        self._reg_read = uclib.uc_reg_read
        self._reg_write = uclib.uc_reg_write
        self._mem_read = uclib.uc_mem_read
        self._mem_write = uclib.uc_mem_write
        self._ctl = uclib.uc_ctl

    def reg_read(self, reg: int) -> int:
        self._val.value = 0
        self._reg_read(self._h, reg, self._ref)
        return self._val.value

    def reg_write(self, reg: int, value: int) -> None:
        self._val.value = value & 0xFFFFFFFFFFFFFFFF
        status = self._reg_write(self._h, reg, self._ref)
        if status:
            raise UcError(status)

    def mem_read(self, addr: int, size: int) -> bytes:
        if size > 4096:
            return bytes(self.uc.mem_read(addr, size))
        status = self._mem_read(self._h, addr, self._buf, size)
        if status:
            raise UcError(status)
        return ctypes.string_at(self._buf, size)

    def mem_write(self, addr: int, data: bytes) -> None:
        status = self._mem_write(self._h, addr, data, len(data))
        if status:
            raise UcError(status)

    def flush_tlb(self) -> None:
        """uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE) without the binding's
        argument marshalling (invlpg and every CR3 write under trap and bt)."""
        status = self._ctl(self._h, TLB_FLUSH)
        if status:
            raise UcError(status)
