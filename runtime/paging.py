"""The hypervisor area in every guest address space (trap and bt under paging).

Once the guest turns paging on, the CPU reaches the shadow GDT, IDT and TSS
(and bt's stubs) through the guest's page tables, so the area must be mapped in
whatever directory CR3 names.  The VMM owns one page-directory slot,
`PD[hyper_base >> 22]`, and points it at a page table kept inside the area
(`HYPER_PT`, mapping the area onto itself, supervisor-only so ring 3 finds
nothing there, as under emulate where the area does not exist).  The walk
reads that table although the guest has no permission on the page
(tests/runtime/test_unicorn_paging_facts.py).

Only the *current* directory holds the VMM's entry: when CR3 moves to another
directory (or paging goes off) the guest's own value goes back into the old
one, so a directory the guest reads while it is not loaded is its own.  The
guest's value of the slot in the current directory is kept here, and the
directory page is write-protected (runtime/protect.py) so a guest store to it
is seen: bytes in the slot update the guest's value, the others are written.
Gaps, documented in docs/paging-plan.md: a guest *read* of the slot in the
current directory sees the VMM's entry (reads are not intercepted: that would
cost an exit per read of the directory), and the MMU's accessed-bit stores
into a write-protected directory are dropped by Unicorn, so the A bits of the
current directory's entries stay as the guest wrote them.

A guest that puts a present entry into the slot wants those addresses for
itself; the area would have to move (bt's `relocate_hyper`).  That is not
built: the run ends with a VMM error naming the slot (docs/paging-plan.md says
how the default base was chosen so Debian's kernel does not get there).
"""
from __future__ import annotations

import struct

from unicorn import x86_const as X

from bt.errors import VMMError
from bt.hyper_layout import HYPER_PT, HYPER_SIZE
from bt.x86 import CR0_PG, CR4_PAE, PAGE, PTE_P, PTE_W

PTE_A = 1 << 5
PTE_D = 1 << 6
SLOT_SIZE = 4


class HyperMapping:
    def __init__(self, mode):
        self.mode = mode
        self.vm = mode.vm
        self.uc = mode.uc
        self.slot: int | None = None        # physical address of the slot holding the VMM's entry
        self.guest_value = 0                # the guest's own value of that slot
        self.inserts = 0                    # times the entry was (re)written into a directory
        self.slot_writes = 0                # guest stores into the slot seen
        self.build_table()

    # -- the area's own page table -------------------------------------------------------
    def build_table(self) -> None:
        """(Re)write HYPER_PT for the area's current base.  A and D preset: the
        MMU then never stores into the area's table."""
        base = self.mode.hyper.base
        flags = PTE_P | PTE_W | PTE_A | PTE_D
        table = b"".join(struct.pack("<I", (base + i * PAGE) | flags) for i in range(HYPER_SIZE // PAGE))
        self.uc.mem_write(base + HYPER_PT, table)

    def our_entry(self) -> int:
        return (self.mode.hyper.base + HYPER_PT) | PTE_P | PTE_W | PTE_A

    # -- following CR0/CR3/CR4 -------------------------------------------------------------
    def sync(self) -> None:
        """After the VMM loaded CR0, CR3 or CR4 into the real CPU: make the area
        reachable in the directory CR3 names now (or nowhere, paging off)."""
        uc = self.uc
        paging = bool(uc.reg_read(X.UC_X86_REG_CR0) & CR0_PG)
        if paging and uc.reg_read(X.UC_X86_REG_CR4) & CR4_PAE:
            raise VMMError("the guest enabled PAE paging: trap and bt give the hypervisor area a "
                           "directory slot in two-level tables only so far (docs/paging-plan.md)")
        slot = None
        if paging:
            directory = uc.reg_read(X.UC_X86_REG_CR3) & ~(PAGE - 1) & 0xFFFFFFFF
            slot = directory + (self.mode.hyper.base >> 22) * SLOT_SIZE
            if slot + SLOT_SIZE > self.vm.config.mem_bytes:
                slot = None                 # a directory outside RAM: the walk faults anyway
        if slot == self.slot:
            if slot is not None:
                self._insert(slot)          # same directory: re-assert (cheap, idempotent)
            return
        self._release()
        if slot is not None:
            self.guest_value = self._read(slot)
            self._check_guest_value(slot)
            self.slot = slot
            self._insert(slot)
            self.mode.protect.watch_writes(slot & ~(PAGE - 1), "page-directory", True)

    def _release(self) -> None:
        if self.slot is None:
            return
        self.uc.mem_write(self.slot, struct.pack("<I", self.guest_value))
        self.mode.protect.watch_writes(self.slot & ~(PAGE - 1), "page-directory", False)
        self.slot = None

    def _insert(self, slot: int) -> None:
        if self._read(slot) != self.our_entry():
            self.uc.mem_write(slot, struct.pack("<I", self.our_entry()))
            self.inserts += 1

    def _read(self, slot: int) -> int:
        return struct.unpack("<I", self.vm.fast.mem_read(slot, SLOT_SIZE))[0]

    def _check_guest_value(self, slot: int) -> None:
        if self.guest_value & PTE_P:
            base = self.mode.hyper.base
            raise VMMError(f"the guest mapped linear {base:#x}-{base + HYPER_SIZE - 1:#x} (directory entry "
                           f"{slot:#x} = {self.guest_value:#x}), where the hypervisor area lives; moving "
                           "the area under paging is not built (docs/paging-plan.md)")

    # -- guest stores into the watched directory page ---------------------------------------
    def watches(self, page: int) -> bool:
        return self.slot is not None and page == self.slot & ~(PAGE - 1)

    def guest_visible(self, address: int, size: int) -> bytes:
        """The directory as the guest wrote it: its own value in the slot."""
        data = bytearray(self.vm.fast.mem_read(address, size))
        if self.slot is not None:
            mine = struct.pack("<I", self.guest_value)
            for i in range(size):
                if 0 <= address + i - self.slot < SLOT_SIZE:
                    data[i] = mine[address + i - self.slot]
        return bytes(data)

    def write(self, address: int, data: bytes) -> None:
        """Perform a guest store to the current directory's page: the slot's
        bytes go to the guest's value, the rest to memory."""
        if address + len(data) <= self.slot or address >= self.slot + SLOT_SIZE:
            self.uc.mem_write(address, bytes(data))
            return
        mine = bytearray(struct.pack("<I", self.guest_value))
        hit = False
        for i, b in enumerate(data):
            off = address + i - self.slot
            if 0 <= off < SLOT_SIZE:
                mine[off] = b
                hit = True
            else:
                self.uc.mem_write(address + i, bytes([b]))
        if hit:
            self.slot_writes += 1
            self.guest_value = struct.unpack("<I", mine)[0]
            self._check_guest_value(self.slot)

    def stats(self) -> dict:
        return {"directory_slot": hex(self.slot) if self.slot is not None else None,
                "guest_slot_value": hex(self.guest_value), "inserts": self.inserts,
                "slot_writes": self.slot_writes}
