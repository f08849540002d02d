"""The hypervisor area in every guest address space (trap and bt under paging).

Once the guest turns paging on, the CPU reaches the shadow GDT, IDT and TSS
(and bt's stubs) through the guest's page tables, so the area must be mapped in
whatever directory CR3 names.  The VMM owns the page-directory slot(s) that
cover it: `PD[hyper_base >> 22]` with two-level tables, or with PAE the two
2 MiB entries of the directory the PDPTE `hyper_base >> 30` names.  Each
points at a page table kept inside the area (`HYPER_PT`, `HYPER_PT_PAE`:
mapping the area onto itself, supervisor-only so ring 3 finds nothing there,
as under emulate where the area does not exist).  The walk reads those tables
although the guest has no permission on the page
(tests/runtime/test_unicorn_paging_facts.py).  A PAE guest whose PDPTE for
the area's gigabyte is not present has no directory to borrow a slot in: the
run ends with a VMM error (Linux's PAE kernels fill all four).

Only the *current* directory holds the VMM's entry: when CR3 moves to another
directory (or paging goes off) the guest's own value goes back into the old
one, so a directory the guest reads while it is not loaded is its own.  The
guest's value of the slot in the current directory is kept here.

The directory page is *not* write-protected and no write hook watches it
(mem_protect rebuilds Unicorn's memory map, milliseconds a call, and Linux's
text_poke switches CR3 15,814 times early in its boot: 31,638 calls; a write
hook would put every guest store on Unicorn's slow path).  A guest store into
the slot simply lands: the slot then holds the guest's value and the area is
unreachable until the VMM notices, which it does (`notice`) wherever that
matters -- at every CR0/CR3/CR4 load (before the old directory is released),
before every slice, when the VMM reads the directory, when the isolation guard
refuses an access, and at a #PF whose CR2 lies in the area: the CPU's own
reach for the area (a segment load from the shadow GDT, a stub fetch or its
state-page access) found the guest's entry, so the VMM takes that value as the
guest's, puts its entry back and the instruction runs again, uncounted
(`retries_fault`; the TLB never caches a failed walk).  Until then the guest
reading its slot sees its own value, as under emulate, and after it too:
A guest *load* of the slot sees the guest's value: a pair of native read
hooks ranged on the current directory's slot puts it there for the one load
and the VMM's entry back after it (runtime/_isolation.c, "The VMM's directory
entry hidden from guest loads"; the CPU's page walks call no memory hook, so
the area stays reachable).  Without it Linux's setup_arch copied the VMM's
entry from swapper_pg_dir into initial_page_table, where it stayed
(docs/linux.md).  The hooks cost no exit; bt already pays for read hooks (its
hidden patch bytes), trap pays Unicorn's slow path for loads from here on
(docs/fidelity.md, "The VMM's directory entry and guest loads of the slot":
~5%). A directory loaded later whose slot holds exactly the VMM's entry (copied
by a guest before it ran with these hooks, or by a path that does not load,
such as a DMA) gets the guest's value of the directory it replaces. The MMU's
accessed-bit stores into the directory land (nothing protects it), and the
VMM's entry has A preset.

Under two-level paging the guest's `mov cr3` is answered by the VM's native
interrupt hook (runtime/_exits.c) whenever the slot only has to move with it:
the hook then owns the one slot's state (address, the VMM's entry, the
guest's value), which `slots`/`guest_values` read there, and takes the view
along: its record of the slot and its hooks' range, moved by the same C
routine this class's `_publish` goes through (runtime/slotview.h
`slotview_place`).  Everything this class decides otherwise (a guest store
into the old slot, a present guest entry, PAE, paging off) stays here: the
hook hands those loads to Python.

A guest that puts a present entry into the slot (kvm-unit-tests identity-maps
all 4 GiB with 4 MiB pages) keeps the area where it is: the VMM's entry stays,
the guest's value is remembered and shown to its loads as any other value, and
the guest runs on.  Only when it *uses* a linear address inside the area (the
guard refuses a ring-1 access, ring 3 meets the VMM's supervisor-only entry)
must the VMM act: `free_base` names a 4 MiB slot the current directory leaves
free, outside RAM, the devices and the APIC window, and the mode moves the area
there and runs the instruction again; with no free slot the run ends
cleanly (runtime/areamove.py).
"""
from __future__ import annotations

import struct

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_READ_AFTER
from unicorn import x86_const as X

from bt.errors import VMMError
from bt.hyper_layout import FIELDS, HYPER_PT, HYPER_PT_PAE, HYPER_SIZE
from bt.x86 import (APIC_WINDOW, CR0_PG, CR4_PAE, PAE_ADDR_MASK, PAE_ENTRY, PAE_LARGE_PAGE, PAGE, PTE_P, PTE_PS,
                    PTE_W)
from runtime.fastuc import hook_add
from runtime.quirks import calibrate

try:
    from runtime import _isolation
except ImportError:         # pragma: no cover - the package build compiles it (Isolation says so)
    _isolation = None

PTE_A = 1 << 5


def vcpu_field_offset(name: str) -> int:
    return FIELDS[name][0]

PTE_D = 1 << 6
_FMT = {4: "<I", 8: "<Q"}


class HyperMapping:
    def __init__(self, mode):
        self.mode = mode
        self.vm = mode.vm
        self.uc = mode.uc
        self._slots: list[tuple[int, int, int]] = []   # (physical address, size, the VMM's entry)
        self._guest_values: list[int] = []             # the guest's own value of each slot
        self._inserts = 0                   # times an entry was (re)written into a directory
        # The native interrupt hook answers `mov cr3` under two-level paging
        # (runtime/_exits.c): it then owns the one slot, and this reads it there.
        self._native = None
        self.slot_writes = 0                # guest stores into a slot seen (`notice`)
        self.faults_retried = 0             # ... of them seen at the CPU's #PF in the area
        ram_ptr = getattr(self.vm, "_ram_ptr", None)
        self.view = _isolation.SlotView(ram_ptr, self.vm.config.mem_bytes) if _isolation and ram_ptr else None
        self._read_hooks: list[int] = []    # the view's (before, after); it moves them (runtime/slotview.h)
        self.build_table()

    # -- the slot state, shared with the native mov cr3 (runtime/_exits.c) ----------------
    def attach_native(self, x) -> None:
        """`x`: the native hook's Exits (runtime/exits.py `enable_mov_cr3`)."""
        self._native = x
        self._publish_native()

    @property
    def slots(self) -> list[tuple[int, int, int]]:
        native = self._native.slot if self._native is not None else None
        return [(native[0], 4, native[1])] if native is not None else self._slots

    @property
    def guest_values(self) -> list[int]:
        native = self._native.slot if self._native is not None else None
        return [native[2]] if native is not None else self._guest_values

    @property
    def inserts(self) -> int:
        return self._inserts + (self._native.inserts if self._native is not None else 0)

    def _set(self, slots: list[tuple[int, int, int]], values: list[int]) -> None:
        self._slots, self._guest_values = list(slots), list(values)
        self._publish_native()

    def _publish_native(self) -> None:
        """Hand a lone two-level slot to the native hook (with the state page's
        cr3 field, whose host address moves with the area, and the slot view,
        whose record and hooks a native `mov cr3` moves along); anything else, none."""
        if self._native is None:
            return
        if len(self._slots) == 1 and self._slots[0][1] == 4:
            (addr, _, ours), (value,) = self._slots[0], self._guest_values
            vcpu = self.mode.vcpu
            self._native.slot = (addr, ours, value, self.mode.hyper.base >> 22,
                                 vcpu.host_addr + vcpu_field_offset("cr3"), self.view)
        else:
            self._native.slot = None

    def refresh_native(self) -> None:
        """After the area moved (bt's relocate_hyper): the slot index and the
        state page's address the native hook uses."""
        self._set(self.slots, self.guest_values)

    # -- the area's own page tables -----------------------------------------------------
    def build_table(self) -> None:
        """(Re)write HYPER_PT and HYPER_PT_PAE for the area's current base.  A and
        D preset: the MMU then never stores into the area's tables."""
        base = self.mode.hyper.base
        flags = PTE_P | PTE_W | PTE_A | PTE_D
        pages = range(HYPER_SIZE // PAGE)
        self.uc.mem_write(base + HYPER_PT, b"".join(struct.pack("<I", (base + i * PAGE) | flags) for i in pages))
        self.uc.mem_write(base + HYPER_PT_PAE, b"".join(struct.pack("<Q", (base + i * PAGE) | flags) for i in pages))

    def our_entry(self, index: int = 0) -> int:
        """The VMM's directory entry: two-level (index 0), or PAE's entry `index` (0, 1)."""
        if self.slots and self.slots[0][1] == PAE_ENTRY:
            return (self.mode.hyper.base + HYPER_PT_PAE + index * PAGE) | PTE_P | PTE_W | PTE_A
        return (self.mode.hyper.base + HYPER_PT) | PTE_P | PTE_W | PTE_A

    # -- following CR0/CR3/CR4 -------------------------------------------------------------
    def _wanted(self) -> list[tuple[int, int, int]]:
        uc, base, ram = self.uc, self.mode.hyper.base, self.vm.config.mem_bytes
        if not uc.reg_read(X.UC_X86_REG_CR0) & CR0_PG:
            return []
        cr3 = uc.reg_read(X.UC_X86_REG_CR3) & 0xFFFFFFFF
        flags = PTE_P | PTE_W | PTE_A
        if not uc.reg_read(X.UC_X86_REG_CR4) & CR4_PAE:
            slot = (cr3 & ~(PAGE - 1)) + (base >> 22) * 4
            return [(slot, 4, (base + HYPER_PT) | flags)] if slot + 4 <= ram else []
        pdpte_addr = (cr3 & ~0x1F) + (base >> 30) * PAE_ENTRY
        if pdpte_addr + PAE_ENTRY > ram:
            return []                       # no tables in RAM: the walk faults anyway
        pdpte = struct.unpack("<Q", self.vm.fast.mem_read(pdpte_addr, PAE_ENTRY))[0]
        if not pdpte & PTE_P:
            raise VMMError(f"the guest's PAE tables have no directory for linear {base & ~0x3FFFFFFF:#x}-"
                           f"{base | 0x3FFFFFFF:#x} (PDPTE at {pdpte_addr:#x} not present), where the "
                           "hypervisor area lives; giving it one is not built (docs/paging-plan.md)")
        directory = pdpte & PAE_ADDR_MASK
        first = (base >> 21) & 0x1FF
        slots = [(directory + (first + i) * PAE_ENTRY, PAE_ENTRY,
                  (base + HYPER_PT_PAE + i * PAGE) | flags) for i in range(HYPER_SIZE // PAE_LARGE_PAGE)]
        return slots if slots[-1][0] + PAE_ENTRY <= ram else []

    def sync(self) -> None:
        """After the VMM loaded CR0, CR3 or CR4 into the real CPU: make the area
        reachable in the directory CR3 names now (or nowhere, paging off)."""
        self.notice()                       # the old directory's slot, as the guest left it
        wanted = self._wanted()
        if [s[:2] for s in wanted] == [s[:2] for s in self.slots]:
            for slot in self.slots:
                self._insert(slot)          # same directory: re-assert (cheap, idempotent)
            self._publish()
            return
        previous = dict(zip((s[2] for s in self.slots), self.guest_values))
        self._release()
        if not wanted:
            return
        # A slot holding exactly the VMM's entry was copied by the guest from a
        # directory where it read that entry (the read gap above; Linux clones
        # its boot directory this way): the guest meant the value it had there.
        values = [previous.get(ours, 0) if self._read(a, n) == ours else self._read(a, n)
                  for a, n, ours in wanted]
        self._set(wanted, values)
        for slot in wanted:
            self._insert(slot)
        self._publish()

    def _release(self) -> None:
        if not self.slots:
            return
        for (addr, size, _), value in zip(self.slots, self.guest_values):
            self.uc.mem_write(addr, struct.pack(_FMT[size], value))
        self._set([], [])
        self._publish()

    def release(self) -> None:
        """Give the current directory's slot back to the guest (before the area
        moves; `sync` then takes the slot of the new base)."""
        self.notice()
        self._release()

    def _publish(self) -> None:
        """Tell the read hooks the current slots and the guest's values; the view
        moves its hooks when the slots moved (a new directory: runtime/slotview.h,
        the routine the native `mov cr3` uses too).  The hooks are made at the
        first slot."""
        if self.view is None:
            return
        self.view.set([(a, n, ours, g) for (a, n, ours), g in zip(self.slots, self.guest_values)])
        if self._read_hooks or not self.slots:
            return                  # no slot: the hooks stay where they are (the view has no slots)
        # Moved in place from then on: a delete-and-add per guest CR3 load left a
        # dead hook pair per switch until the slice ended, which every slow-path
        # load walked (Linux under bt: twice the CPU time; runtime/quirks.py move_hook).
        lo, hi = self.view.range()
        before, after = _isolation.slot_callbacks()
        self._read_hooks = [hook_add(self.uc, UC_HOOK_MEM_READ, before, id(self.view), lo, hi),
                            hook_add(self.uc, UC_HOOK_MEM_READ_AFTER, after, id(self.view), lo, hi)]
        self.view.attach(tuple(self._read_hooks), calibrate().hook_range)
        # Blocks translated while no read hook existed load without calling
        # any (tests/runtime/test_unicorn_facts.py): retranslate them, once.
        self.uc.ctl_flush_tb()

    def notice(self) -> bool:
        """Take a guest store into a slot of the current directory (its bytes no
        longer the VMM's entry) as the guest's value and put the entry back.
        True when there was one.  A present value is kept as any other (see the top)."""
        seen = False
        slots, values = self.slots, list(self.guest_values)
        for k, (addr, size, ours) in enumerate(slots):
            value = self._read(addr, size)
            if value != ours:
                values[k] = value
                seen = True
        if seen:
            self.slot_writes += 1
            self._set(slots, values)
            for slot in self.slots:
                self._insert(slot)
            self._publish()
        return seen

    def _insert(self, slot: tuple[int, int, int]) -> None:
        addr, size, ours = slot
        if self._read(addr, size) != ours:
            self.uc.mem_write(addr, struct.pack(_FMT[size], ours))
            self._inserts += 1

    def _read(self, addr: int, size: int) -> int:
        return struct.unpack(_FMT[size], self.vm.fast.mem_read(addr, size))[0]

    # -- a guest that maps the area's addresses itself --------------------------------------
    def guest_entry(self, linear: int) -> tuple[int, int] | None:
        """(directory entry's address, the guest's value) when the guest's own
        entry for `linear` (inside the area) is present: the guest mapped those
        addresses and the VMM's entry shadows its mapping."""
        base = self.mode.hyper.base
        if not base <= linear < base + HYPER_SIZE:
            return None
        slots, values = self.slots, self.guest_values
        if not slots:
            return None
        k = (linear - base) // PAE_LARGE_PAGE if slots[0][1] == PAE_ENTRY else 0
        return (slots[k][0], values[k]) if values[k] & PTE_P else None

    def mark_guest_entry(self, linear: int, write: bool) -> None:
        """The CPU's walk through the guest's own entry for `linear` would have
        set its accessed bit (and dirty, for a store through a large page)
        before the access failed: set them in the value the guest sees."""
        base, slots, values = self.mode.hyper.base, self.slots, list(self.guest_values)
        k = (linear - base) // PAE_LARGE_PAGE if slots[0][1] == PAE_ENTRY else 0
        values[k] |= PTE_A | (PTE_D if write and values[k] & PTE_PS else 0)
        self._set(slots, values)
        self._publish()

    def free_base(self) -> int | None:
        """A base for the area whose directory slot the guest leaves free in the
        current (two-level) directory, the highest first: outside RAM, clear of
        every other mapped region (devices) and of the APIC window
        (APIC_WINDOW: I/O APIC and local APIC, whose addresses guests assume
        without mapping them first).  None when there is none (kvm-unit-tests
        maps all 1,024 entries) or the guest uses PAE (moving between PAE
        directories is not built)."""
        slots = self.slots
        if not slots or slots[0][1] != 4:
            return None
        directory = slots[0][0] & ~(PAGE - 1)
        entries = struct.unpack("<1024I", self.vm.fast.mem_read(directory, PAGE))
        base = self.mode.hyper.base
        taken = [(b, e) for b, e, _ in self.uc.mem_regions() if not base <= b < base + HYPER_SIZE]
        taken.append(APIC_WINDOW)
        ram = self.vm.config.mem_bytes
        for index in range(1023, -1, -1):
            lo = index << 22
            hi = lo + HYPER_SIZE - 1
            if lo < ram or lo == base or entries[index] & PTE_P:
                continue
            if any(b <= hi and lo <= e for b, e in taken):
                continue
            return lo
        return None

    # -- the VMM's reads of the current directory page ---------------------------------------
    def _guest_bytes(self) -> tuple[int, int, bytearray]:
        """The slots' span (they are adjacent) and the guest's bytes of it."""
        lo = self.slots[0][0]
        hi = self.slots[-1][0] + self.slots[-1][1]
        mine = bytearray()
        for (_, size, _), value in zip(self.slots, self.guest_values):
            mine += struct.pack(_FMT[size], value)
        return lo, hi, mine

    def guest_visible(self, address: int, data: bytes) -> bytes:
        """`data`, read at physical `address`, as the guest wrote it: its own
        values in the current directory's slots."""
        self.notice()
        if not self.slots:
            return data
        lo, hi, mine = self._guest_bytes()
        a, b = max(lo, address), min(hi, address + len(data))
        if a >= b:
            return data
        out = bytearray(data)
        out[a - address:b - address] = mine[a - lo:b - lo]
        return bytes(out)

    def stats(self) -> dict:
        return {"directory_slots": [hex(a) for a, _, _ in self.slots],
                "guest_slot_values": [hex(v) for v in self.guest_values], "inserts": self.inserts,
                "slot_writes": self.slot_writes, "faults_retried": self.faults_retried}
