"""Moving the hypervisor area when a paging guest uses its addresses (trap, bt).

A guest whose own directory maps the area's 4 MiB (kvm-unit-tests identity-maps
all 4 GiB) keeps running while it leaves those addresses alone: the VMM's entry
shadows the guest's, which its loads still see (runtime/paging.py).  When it
*uses* them -- the isolation guard refuses a ring-1 access, ring 3 meets the
VMM's supervisor-only entry, an emulated instruction's operand lies there
(runtime/memory.py `AreaInUse`) -- `AreaMover` moves the area to a slot the
current directory leaves free (`HyperMapping.free_base`) and the instruction
runs again, uncounted.  With no free slot the run ends: as emulate's does when
the guest's 4 MiB page points at physical memory that is not there (the
identity map over 0xFF000000), else with a one-line VMM error naming the
address.  Never a wrong value.  docs/paging-plan.md, "A present guest entry in
the slot".
"""
from __future__ import annotations

from unicorn import x86_const as X

from bt.hyper_layout import HYPER_SIZE, SHADOW_GDT, SHADOW_IDT, STATE, VMM_TSS
from bt.outcome import Outcome
from bt.x86 import CR0_PG, CR4_PSE, DESC_PRESENT, LARGE_PAGE, PTE_PS, SYS_TSS32_AVAILABLE, TSS32_SIZE
from runtime.isolation import unmapped_access

# A 4 MiB entry's bits 20:13: physical address bits 39:32 (PSE-36), above RAM.
PSE36_BITS = 0x1FE000


class AreaMover:
    def __init__(self, mode):
        self.mode = mode
        self.relocations = 0        # moves of the area
        self.uncount = 0            # instructions counted as started that run again
        self._pending = None        # a new base chosen inside a hook: moved before the next slice

    # -- a guest use of the area's addresses --------------------------------------------
    def on_use(self, linear: int, write: bool) -> bool:
        """Between slices: move the area (True: the access runs again and
        reaches what the guest mapped) or end the run (False)."""
        new = self.mode.hyper_mapping.free_base()
        if new is not None:
            self.mode.relocate_hyper(new)          # the mode's: bt counts it too
            return True
        self._unusable(linear, write)
        return False

    def on_use_in_hook(self, linear: int, write: bool) -> bool:
        """`on_use` from inside a hook: decide now; the move waits for the next
        slice (mapping and unmapping the area from a hook is not safe), the end
        of the run does not (the slice must not go on).  True when it moves."""
        new = self.mode.hyper_mapping.free_base()
        if new is None:
            self._unusable(linear, write)
        else:
            self._pending = new
        self.mode.vm.halt_slice()
        return new is not None

    def before_slice(self) -> None:
        vm = self.mode.vm
        if self.uncount:
            # A fault's instruction was counted as started (runtime/vm.py
            # `_on_interrupt`); it runs again now and is counted then.
            vm.retired -= self.uncount
            vm.vtime -= self.uncount
            self.uncount = 0
        if self._pending is not None:
            new, self._pending = self._pending, None
            self.mode.relocate_hyper(new)

    def _unusable(self, linear: int, write: bool) -> None:
        """No slot to move the area to: end the run.  Host-memory work only, so
        a hook may call it."""
        mode, vm = self.mode, self.mode.vm
        hm = mode.hyper_mapping
        addr, value = hm.guest_entry(linear)
        target = self._large_page_target(value, linear)
        if target is not None and not self._mapped_physical(target):
            hm.mark_guest_entry(linear, write)       # emulate's walk set them before the access failed
            vm.stop = vm.stop or unmapped_access(target)
            return
        base = mode.hyper.base
        vm.stop = vm.stop or Outcome.VMM_ERROR.stop(
            f"the guest used linear {linear:#x}, inside the hypervisor area "
            f"({base:#x}-{base + HYPER_SIZE - 1:#x}), which its own directory entry {addr:#x} = "
            f"{value:#x} maps, and its directory leaves no 4 MiB slot free to move the area to")

    def _large_page_target(self, value: int, linear: int) -> int | None:
        """The physical address a two-level 4 MiB entry gives `linear` (None:
        a page table, PAE, or PSE-36 bits above 4 GiB)."""
        mode = self.mode
        if mode.hyper_mapping.slots[0][1] != 4 or not value & PTE_PS \
                or not mode.vcpu.get("cr4") & CR4_PSE or value & PSE36_BITS:
            return None
        return (value & 0xFFC00000) | (linear & (LARGE_PAGE - 1))

    def _mapped_physical(self, address: int) -> bool:
        """RAM or a device: something emulate's access would reach (the area is
        mapped in the engine too, but not there for the guest)."""
        mode = self.mode
        return not mode.hyper.contains(address) and \
            any(b <= address <= e for b, e, _ in mode.uc.mem_regions())

    # -- the move ---------------------------------------------------------------------
    def relocate(self, new_base: int) -> None:
        """Move the area (between slices): the guest's directory slot goes back
        to it, the area is copied, the real descriptor-table registers, the
        virtual CPU, the guard and the shadow GDT's hook follow, and the new
        base's slot is taken (`HyperMapping.sync`).  bt also moves its stubs
        (the mode's `_relocate_users`, `_after_relocation`)."""
        mode = self.mode
        uc, vm, hm, old = mode.uc, mode.vm, mode.hyper_mapping, mode.hyper.base
        if new_base & (LARGE_PAGE - 1) or new_base < vm.config.mem_bytes:
            raise ValueError(f"bad hypervisor base {new_base:#x}")
        hm.release()
        contents = bytes(uc.mem_read(old, HYPER_SIZE))
        old_mem = mode.hyper._mem                  # keep the old mapping alive until unmapped
        mode.hyper.map_at(new_base)
        uc.mem_write(new_base, contents)
        mode._relocate_users(old, new_base)
        _, _, glimit, _ = uc.reg_read(X.UC_X86_REG_GDTR)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, new_base + SHADOW_GDT, glimit, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, new_base + SHADOW_IDT, 0x7FF, 0))
        uc.reg_write(X.UC_X86_REG_TR, (0, new_base + VMM_TSS, TSS32_SIZE - 1,
                                           (DESC_PRESENT | SYS_TSS32_AVAILABLE) << 8))
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        if old <= eip < old + HYPER_SIZE:          # stopped inside a stub: follow it
            uc.reg_write(X.UC_X86_REG_EIP, eip - old + new_base)
        uc.mem_unmap(old, HYPER_SIZE)
        mode.hyper.base = new_base
        hm.build_table()                           # the area's own page table names the new base
        vm.refresh_clock_memory()                  # before the old host memory goes
        mode._after_relocation()
        mode.vcpu.state_addr = new_base + STATE
        mode.vcpu.rebind(mode.hyper.host + STATE)
        hm.refresh_native()                        # the native mov cr3's slot index and state page
        del old_mem
        mode.isolation.arm()
        mode.hook_shadow_gdt()
        hm.sync()                                  # the new base's slot in the current directory
        if uc.reg_read(X.UC_X86_REG_CR0) & CR0_PG:
            # The guest's entry is back in the old slot: no translation of the
            # old base through the VMM's entry may stay in the TLB.
            uc.reg_write(X.UC_X86_REG_CR3, uc.reg_read(X.UC_X86_REG_CR3))
        uc.ctl_flush_tb()
        self.relocations += 1
