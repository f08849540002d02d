"""Guest memory as the VMM sees it.

`uc.mem_read`/`mem_write` take *physical* addresses.  Everything the VMM does on
the guest's behalf (reading the IDT, pushing an exception frame, decoding at
EIP) uses *linear* addresses, so it goes through this module's walk of the
guest's page tables: 2-level with 4 KiB and 4 MiB (PSE) pages, or PAE's
3-level walk (4 KiB and 2 MiB pages, NX with EFER.NXE).  Both are pinned to
Unicorn's own MMU by tests/runtime/test_guest_memory.py (reserved bits and
error codes included).

A VM's memory walks natively (runtime/_walk.c, the walk of runtime/pagewalk.h
that the instruction clock shares): tables straight from the host memory behind
RAM, registers from the live CPU state, well under a microsecond instead of
~37 us through ctypes reads.  The Python walk below stays as the reference
(`translate_reference`): tests/runtime/test_native_walk.py compares the two on
random tables, and it serves engines without a host RAM pointer (tests'
scratch engines) or without the live CPU state.
"""
from __future__ import annotations

import ctypes
import struct

from unicorn import Uc, UcError
from unicorn import x86_const as X

from bt.errors import VMMError
from bt.x86 import (CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, EFER, EFER_NXE, PAE_ADDR_MASK, PAE_LARGE_PAGE, PAE_LARGE_RSVD,
                    PAE_PDPTE_RSVD, PAE_RSVD, PAGE, PDE_PS_RESERVED, PF_ERR_FETCH, PF_ERR_RSVD, PTE_A, PTE_D, PTE_NX, PTE_P, PTE_PS,
                    PTE_U, PTE_W)


class PageFault(Exception):
    """A VMM access on the guest's behalf hit a not-present or forbidden page."""

    def __init__(self, linear: int, error_code: int):
        super().__init__(f"page fault at {linear:#x} (error {error_code:#x})")
        self.linear = linear
        self.error_code = error_code


class OutsideRam(Exception):
    """A descriptor-table or stack access the VMM makes in the CPU's place
    reached physical memory outside guest RAM.  Under emulate the CPU's own
    access there ends the run as an unmapped access, so the VMM's must too;
    in trap/bt the hypervisor area lies there and must stay invisible."""

    def __init__(self, address: int):
        super().__init__(f"guest touched unmapped physical memory at {address:#x}")
        self.address = address


class AreaInUse(VMMError):
    """A VMM access in the guest's place (an emulated instruction's operand, a
    delivery's frame or table) at a linear address inside the hypervisor area
    that the guest's own directory entry maps (trap/bt; runtime/paging.py).
    The walk met the VMM's entry instead of the guest's, so neither its result
    nor its #PF is the guest's: the mode moves the area and runs the
    instruction again where it can (TrapMode.on_fault), else the run ends
    with this one-line VMM error -- never a wrong value or #PF."""

    def __init__(self, linear: int, write: bool):
        super().__init__(f"the VMM accessed linear {linear:#x} in the guest's place; the guest's own "
                         "directory entry maps it, but the hypervisor area lives there (moving the area "
                         "from this access is not built: docs/paging-plan.md)")
        self.linear = linear
        self.write = write


class GuestMemory:
    def __init__(self, uc: Uc, ram_bytes: int):
        from runtime.fastuc import FastUc
        self.uc = uc
        self.fast = FastUc(uc)
        self.ram_bytes = ram_bytes
        # RAM devices bring (pc-testdev's 64 KiB: runtime/mmio.py `_map_ram`):
        # memory the CPU reaches like RAM, so `read_cpu`/`push_cpu` accept it.
        # Page tables there are not walked (the walk reads RAM's host memory).
        self.device_ram: list[tuple[int, int]] = []
        self._walker = None          # the native walk, once use_native has run
        self._ram = None             # the host memory behind RAM (an mmap), when known
        self._cr0 = None             # CR0 in the live CPU state (ctypes view), when known
        # trap/bt: linear -> True when the guest's own entry maps that address of
        # the hypervisor area (runtime/trap.py sets it; AreaInUse above).
        self.area_in_use = None

    def use_native(self, ram, ram_ptr: int, quirks) -> None:
        """Walk natively from now on: `ram` is the host buffer mapped as guest RAM
        at `ram_ptr`; `quirks` gives the live CPU state and its calibrated
        offsets.  Without the live state the Python walk stays in use."""
        self._ram = ram
        env = quirks.env
        if env is None:
            return
        from runtime._walk import Walker
        cr0, cr3, cr4 = quirks.off.cr
        self._walker = Walker(ram_ptr, self.ram_bytes, env, cr0, cr3, cr4, quirks.off.efer)
        self._translate = self._walker.translate
        self._cr0 = ctypes.c_uint64.from_address(env + cr0)

    def add_ram(self, base: int, size: int) -> None:
        self.device_ram.append((base, size))

    def _device_ram(self, phys: int, n: int) -> bool:
        """Do the `n` bytes at `phys` lie in one device's RAM?"""
        return any(b <= phys and phys + n <= b + s for b, s in self.device_ram)

    # -- physical --------------------------------------------------------
    def read_phys(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(addr, size))

    def write_phys(self, addr: int, data: bytes) -> None:
        self.uc.mem_write(addr, bytes(data))

    def phys_u32(self, addr: int) -> int:
        return struct.unpack("<I", self.uc.mem_read(addr, 4))[0]

    # -- translation -------------------------------------------------------
    def paging(self) -> bool:
        if self._cr0 is not None:
            return bool(self._cr0.value & CR0_PG)
        return bool(self.fast.reg_read(X.UC_X86_REG_CR0) & CR0_PG)

    def translate(self, linear: int, write: bool = False, user: bool = False, fetch: bool = False) -> int:
        """Linear -> physical through the guest's page tables (identity when paging
        is off); PageFault with the error code the CPU gives when the walk fails,
        AreaInUse when it failed on the hypervisor area's entry where the guest's
        own maps the address (no cost on the path that succeeds)."""
        try:
            if self._walker is None:
                return self.translate_reference(linear, write, user, fetch)
            pa = self._translate(linear, (2 if write else 0) | (4 if user else 0) | (16 if fetch else 0))
            if pa < 0:
                raise PageFault(linear & 0xFFFFFFFF, -pa - 1)
        except PageFault as pf:
            if self.area_in_use is not None and self.area_in_use(pf.linear):
                raise AreaInUse(pf.linear, write) from None
            raise
        return pa

    def translate_reference(self, linear: int, write: bool = False, user: bool = False,
                            fetch: bool = False) -> int:
        """`translate` in Python: the reference the native walk is tested against."""
        linear &= 0xFFFFFFFF
        uc = self.uc
        if not self.fast.reg_read(X.UC_X86_REG_CR0) & CR0_PG:
            return linear
        cr3 = uc.reg_read(X.UC_X86_REG_CR3)
        cr4 = uc.reg_read(X.UC_X86_REG_CR4)
        err = (2 if write else 0) | (4 if user else 0)
        if cr4 & CR4_PAE:
            return self._translate_pae(linear, cr3, err, write, user, fetch)
        pde_addr = (cr3 & 0xFFFFF000) + ((linear >> 22) << 2)
        pde = self._pt_read(pde_addr, linear, err)
        if not pde & PTE_P:
            raise PageFault(linear, err)
        if pde & PTE_PS and cr4 & CR4_PSE:
            # As Unicorn's MMU (tests/runtime/test_guest_memory.py): bit 21 is
            # reserved, bits 20:13 are physical address bits 39:32 (PSE-36).
            if pde & PDE_PS_RESERVED:
                raise PageFault(linear, err | PTE_P | PF_ERR_RSVD)
            self._check(pde, linear, err, write, user)
            return ((pde >> 13) & 0xFF) << 32 | (pde & 0xFFC00000) | (linear & 0x3FFFFF)
        pte_addr = (pde & 0xFFFFF000) + (((linear >> 12) & 0x3FF) << 2)
        pte = self._pt_read(pte_addr, linear, err)
        if not pte & PTE_P:
            raise PageFault(linear, err)
        self._check(pde & pte, linear, err, write, user)
        return (pte & 0xFFFFF000) | (linear & (PAGE - 1))

    def _translate_pae(self, linear: int, cr3: int, err: int, write: bool, user: bool, fetch: bool) -> int:
        """PAE: PDPT (4 entries at CR3 bits 31:5) -> directory -> table, 8-byte
        entries.  As Unicorn's MMU (MAXPHYADDR 40): bits 40-62 reserved, bit 63
        is NX with EFER.NXE and reserved without it, a PDPTE's bit 63 is always
        reserved, a 2 MiB entry's bits 13-20 are reserved; a fetch fault carries
        the I/D bit when NXE is on."""
        nxe = bool(self.uc.msr_read(EFER) & EFER_NXE)
        if fetch and nxe:
            err |= PF_ERR_FETCH
        rsvd = PAE_RSVD if nxe else PAE_RSVD | PTE_NX
        pdpte = self._pt_read64((cr3 & 0xFFFFFFE0) + ((linear >> 30) << 3), linear, err)
        if not pdpte & PTE_P:
            raise PageFault(linear, err)
        if pdpte & PAE_PDPTE_RSVD:
            raise PageFault(linear, err | PTE_P | PF_ERR_RSVD)
        pde = self._pt_read64((pdpte & PAE_ADDR_MASK) + (((linear >> 21) & 0x1FF) << 3), linear, err)
        if not pde & PTE_P:
            raise PageFault(linear, err)
        if pde & rsvd or pde & PTE_PS and pde & PAE_LARGE_RSVD:
            raise PageFault(linear, err | PTE_P | PF_ERR_RSVD)
        if pde & PTE_PS:
            self._check(pde, linear, err, write, user, fetch and nxe and pde & PTE_NX)
            return (pde & PAE_ADDR_MASK & ~(PAE_LARGE_PAGE - 1)) | (linear & (PAE_LARGE_PAGE - 1))
        pte = self._pt_read64((pde & PAE_ADDR_MASK) + (((linear >> 12) & 0x1FF) << 3), linear, err)
        if not pte & PTE_P:
            raise PageFault(linear, err)
        if pte & rsvd:
            raise PageFault(linear, err | PTE_P | PF_ERR_RSVD)
        self._check(pde & pte, linear, err, write, user, fetch and nxe and (pde | pte) & PTE_NX)
        return (pte & PAE_ADDR_MASK) | (linear & (PAGE - 1))

    # -- accessed and dirty bits ---------------------------------------------
    def mark_accessed(self, linear: int, size: int, write: bool = False, host: bool = False) -> None:
        """Set the accessed bits (and, for a write, the dirty bit) that the
        CPU's own walk sets when it makes this access: the directory entry's A,
        the table entry's A (and D), or a large page's A (and D).  Called after
        a successful access the VMM makes in the CPU's place (IDT, GDT and TSS
        reads of a delivery or a segment load, the frame it pushes, an emulated
        instruction's memory operand), so guest RAM keeps emulate's A/D bits
        (demo:paging: the PTE of the page holding the guest's IDT).  Not for the
        VMM's own bookkeeping reads (shadow-table syncs, decoding).  As the CPU,
        bits are set on every such access (a TLB hit on real hardware would not
        set a bit the guest cleared without invlpg; no known guest relies on that).
        `host`: read and write the tables through the host memory behind RAM,
        for callers inside an engine hook, where uc.mem_write crashes Unicorn
        (runtime/trap.py `_on_shadow_gdt_write`)."""
        if not self.paging():
            return
        linear &= 0xFFFFFFFF
        end = (linear + max(size, 1) - 1) & 0xFFFFFFFF
        for page in {linear & ~(PAGE - 1), end & ~(PAGE - 1)}:
            self._mark_page(page, write, host and self._ram is not None)

    def _mark_page(self, linear: int, write: bool, host: bool = False) -> None:
        fast = self.fast
        cr3 = fast.reg_read(X.UC_X86_REG_CR3)
        cr4 = fast.reg_read(X.UC_X86_REG_CR4)
        ram = self._ram
        load = (lambda a, n: ram[a:a + n]) if host else self.uc.mem_read
        if cr4 & CR4_PAE:
            width, fmt = 8, "<Q"
            pdpte_addr = (cr3 & 0xFFFFFFE0) + ((linear >> 30) << 3)
            if pdpte_addr + 8 > self.ram_bytes:
                return
            pdpte = struct.unpack(fmt, load(pdpte_addr, 8))[0]
            pde_addr = (pdpte & PAE_ADDR_MASK) + (((linear >> 21) & 0x1FF) << 3)
            mask, index, large = PAE_ADDR_MASK, (linear >> 12) & 0x1FF, True
        else:
            width, fmt = 4, "<I"
            pde_addr = (cr3 & 0xFFFFF000) + ((linear >> 22) << 2)
            mask, index, large = 0xFFFFF000, (linear >> 12) & 0x3FF, bool(cr4 & CR4_PSE)
        entries = []
        if pde_addr + width > self.ram_bytes:
            return
        pde = struct.unpack(fmt, load(pde_addr, width))[0]
        if not pde & PTE_P:
            return
        if pde & PTE_PS and large:
            entries.append((pde_addr, pde, PTE_A | (PTE_D if write else 0)))
        else:
            entries.append((pde_addr, pde, PTE_A))
            pte_addr = (pde & mask & ~(PAGE - 1)) + index * width
            if pte_addr + width > self.ram_bytes:
                return
            pte = struct.unpack(fmt, load(pte_addr, width))[0]
            if not pte & PTE_P:
                return
            entries.append((pte_addr, pte, PTE_A | (PTE_D if write else 0)))
        for addr, value, bits in entries:
            if value & bits != bits:
                # The low byte holds A and D: one byte written, as the CPU's
                # locked OR touches nothing else of the entry.
                if host:
                    ram[addr] = (value | bits) & 0xFF
                else:
                    self.uc.mem_write(addr, bytes([(value | bits) & 0xFF]))

    def _pt_read64(self, addr: int, linear: int, err: int) -> int:
        if addr + 8 > self.ram_bytes:
            raise PageFault(linear, err)
        return struct.unpack("<Q", self.uc.mem_read(addr, 8))[0]

    def _pt_read(self, addr: int, linear: int, err: int) -> int:
        if addr + 4 > self.ram_bytes:
            raise PageFault(linear, err)
        return self.phys_u32(addr)

    def _check(self, flags: int, linear: int, err: int, write: bool, user: bool, no_exec=False) -> None:
        if no_exec:
            raise PageFault(linear, err | PTE_P)
        if user and not flags & PTE_U:
            raise PageFault(linear, err | PTE_P)
        if write and not flags & PTE_W:
            if user or self.uc.reg_read(X.UC_X86_REG_CR0) & CR0_WP:
                raise PageFault(linear, err | PTE_P)

    # -- linear ------------------------------------------------------------
    def read(self, linear: int, size: int, user: bool = False) -> bytes:
        if size <= PAGE - (linear & (PAGE - 1)):       # one page: the common case
            phys = self.translate(linear, False, user)
            if self._ram is not None and phys + size <= self.ram_bytes:
                return self._ram[phys:phys + size]     # the host memory itself: no engine call
            return self.fast.mem_read(phys, size)
        out = bytearray()
        while size:
            n = min(size, PAGE - (linear & (PAGE - 1)))
            phys = self.translate(linear, False, user)
            out += self.uc.mem_read(phys, n)
            linear += n
            size -= n
        return bytes(out)

    def read_cpu(self, linear: int, size: int, mark: bool = True) -> bytes:
        """`read` for what the CPU itself would load (descriptor tables, the
        TSS): every byte must lie in RAM, else `OutsideRam` (the first byte past
        RAM's end, as Unicorn reports the first unmapped load).  `mark`: set the
        accessed bits the CPU's load would (`mark_accessed`); off for the VMM's
        own reads of the tables (shadow syncs), which the CPU never makes."""
        linear &= 0xFFFFFFFF
        out = bytearray()
        while size:
            n = min(size, PAGE - (linear & (PAGE - 1)))
            phys = self.translate(linear)
            if phys + n > self.ram_bytes and not self._device_ram(phys, n):
                raise OutsideRam(max(phys, self.ram_bytes))
            out += self.fast.mem_read(phys, n)
            if mark:
                self.mark_accessed(linear, n)
            linear = (linear + n) & 0xFFFFFFFF
            size -= n
        return bytes(out)

    def write(self, linear: int, data: bytes, user: bool = False) -> None:
        # Translate every page first so a fault leaves memory untouched.
        chunks = []
        off = 0
        while off < len(data):
            n = min(len(data) - off, PAGE - ((linear + off) & (PAGE - 1)))
            chunks.append((self.translate(linear + off, True, user), data[off:off + n]))
            off += n
        for phys, chunk in chunks:
            self.uc.mem_write(phys, bytes(chunk))
        # A store the VMM makes for the guest (an emulated instruction's operand,
        # the TSS busy bit ltr sets) dirties the page as the CPU's would.
        self.mark_accessed(linear, len(data), write=True)

    def push_cpu(self, linear: int, data: bytes) -> None:
        """`write` for a stack frame the CPU itself pushes (exception and
        interrupt delivery): every byte must lie in RAM, else `OutsideRam` and
        nothing is written.  The CPU stores a frame from the top down, so the
        address reported is the first of those stores that leaves RAM (as
        Unicorn reports a push under emulate)."""
        chunks = []
        off = 0
        while off < len(data):
            n = min(len(data) - off, PAGE - ((linear + off) & (PAGE - 1)))
            chunks.append((self.translate((linear + off) & 0xFFFFFFFF, True, False), off, n))
            off += n
        for phys, off, n in reversed(chunks):
            if phys + n > self.ram_bytes and not self._device_ram(phys, n):
                top = phys + n - 4 if n >= 4 else phys          # the highest dword of this part
                raise OutsideRam(max(top, self.ram_bytes) if phys < self.ram_bytes else top)
        for phys, off, n in chunks:
            self.uc.mem_write(phys, bytes(data[off:off + n]))
            self.mark_accessed(linear + off, n, write=True)

    def u32(self, linear: int) -> int:
        return struct.unpack("<I", self.read(linear, 4))[0]

    def try_read(self, linear: int, size: int) -> bytes | None:
        """Read for diagnostics and decoding: None instead of an exception."""
        try:
            return self.read(linear, size)
        except (PageFault, AreaInUse, UcError):
            return None
