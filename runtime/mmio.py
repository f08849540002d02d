"""Memory-mapped devices: each device's physical ranges (`Device.mmio`) become
Unicorn MMIO regions (`uc.mmio_map`) whose accesses reach the device.

Why `mmio_map` and not the VM's own dispatch through memory hooks: an MMIO
region costs only the accesses that reach it (Unicorn marks its pages
TLB_MMIO), while any UC_HOOK_MEM_READ/WRITE hook alive when a block is
translated sends every load and store of that block to the slow path, whatever
the hook's range (qemu/include/tcg/tcg.h tcg_uc_has_hookmem;
tests/runtime/test_mmio_facts.py measures both).  The regions are physical, so
the guest reaches them through its own page tables in every mode.

The rule for stores (tests/runtime/test_mmio_facts.py pins the facts):
Unicorn 2.1.4 checks for a stop request right after every memory access of a
translated block and, when one is pending, leaves the instruction by restoring
the state *before* it (Unicorn's check_exit_request -> cpu_loop_exit_restore):
a stop requested inside an MMIO callback abandons the instruction that made the
access, after the device saw it, and the instruction runs again when the slice
resumes -- a self-IPI written to the ICR became 1,452 ICR writes.  And EIP read
inside the callback is the block's start, not the instruction's.  So:

* a store that reaches a device outside a one-instruction slice is not given
  to the device: the slice ends there (the instruction is abandoned, EIP and
  the clock point at it, `clock.cut(eip, False)`), and the VM runs it again
  alone in a one-instruction slice (`VM.wants_single_step`), in which the store
  reaches the device and the slice ends right after it, so an interrupt the
  store makes deliverable (a self-IPI, an EOI unmasking a waiting one) is
  injected before the next instruction, as the CPU takes it;
* a load is answered in place (it must not change what the run loop acts
  on); the device's `now()` is then the time of the running block's start
  (EIP is stale there), exact inside a one-instruction slice.

Each replayed store costs two engine entries and one retranslation of the
block it starts (the clock's exact stop): nothing for guests that do not touch
MMIO, a few microseconds per APIC register write.

A device's own RAM (`Device.ram_ranges`: pc-testdev's 64 KiB) is mapped here too,
as plain memory over host memory the map owns (`uc.mem_map_ptr`), so guest
accesses cost nothing and code there is counted like code in RAM (the clock
reads it: `host_regions`).  The same placement checks as for registers.
"""
from __future__ import annotations

import ctypes
import mmap

from unicorn import UC_PROT_ALL

from bt.errors import BadInput, VMMError
from bt.hyper_layout import HYPER_SIZE
from bt.mode import Mode


class MMIOMap:
    def __init__(self, vm, devices):
        self.vm = vm
        self.regions: list[tuple[int, int, object]] = []
        self.reads = 0
        self.writes = 0
        self.replays = 0            # stores abandoned once and run again alone
        self.ram: list[tuple[int, int, int, mmap.mmap]] = []   # (base, size, host address, buffer)
        self._placed: list[tuple[int, int, object]] = []
        for dev in devices:
            for base, size in dev.mmio:
                self._map(dev, base, size)
            for base, size in dev.ram_ranges:
                self._map_ram(dev, base, size)

    def _place(self, dev, base: int, size: int, what: str) -> None:
        """Check a device range's place: clear of other devices, RAM and the
        hypervisor area's base (BadInput: the user chose that base)."""
        for b, s, other in self._placed:
            if base < b + s and b < base + size:
                raise VMMError(f"MMIO {base:#x}+{size:#x} of {dev.name} overlaps {other.name}")
        cfg = self.vm.config
        if base < cfg.mem_bytes:
            raise VMMError(f"MMIO {base:#x} of {dev.name} lies inside guest RAM")
        if cfg.mode is not Mode.EMULATE and base < cfg.hyper_base + HYPER_SIZE and cfg.hyper_base < base + size:
            raise BadInput(f"hypervisor base {cfg.hyper_base:#x} overlaps the {dev.name}'s {what} "
                           f"at {base:#x}")
        self._placed.append((base, size, dev))

    def _map_ram(self, dev, base: int, size: int) -> None:
        self._place(dev, base, size, "RAM")
        buf = mmap.mmap(-1, size)
        host = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        self.vm.uc.mem_map_ptr(base, size, UC_PROT_ALL, host)
        self.vm.mem.add_ram(base, size)
        self.ram.append((base, size, host, buf))

    def host_regions(self) -> list[tuple[int, int, int]]:
        """(base, size, host address) of the devices' RAM (for the clock)."""
        return [(base, size, host) for base, size, host, _ in self.ram]

    def _map(self, dev, base: int, size: int) -> None:
        self._place(dev, base, size, "registers")
        self.regions.append((base, size, dev))
        vm = self.vm

        def read(offset, size, _ud=None):
            return self._read(dev, base + offset, size)

        def write(offset, size, value, _ud=None):
            self._write(dev, base + offset, size, value)

        vm.uc.mmio_map(base, size, vm.guarded(read, 0), None, vm.guarded(write), None)

    def _read(self, dev, addr: int, size: int) -> int:
        if self.vm.stop is not None:
            return 0
        self.reads += 1
        self.vm.counters.add("exits")
        return dev.mmio_read(addr, size) & ((1 << (8 * size)) - 1)

    def _write(self, dev, addr: int, size: int, value: int) -> None:
        vm = self.vm
        if vm.stop is not None:
            return
        vm.counters.add("exits")
        if not vm.single_stepping():
            self.replays += 1
            vm.wants_single_step()
            vm.halt_slice(abort=True)       # the store is abandoned: see the module's docstring
            return
        # The slice is this one instruction: it ends right after the store with
        # no stop request (one here would abandon the instruction again).
        self.writes += 1
        dev.mmio_write(addr, size, value & ((1 << (8 * size)) - 1))

    def report(self) -> dict:
        """The figures of a run that touched MMIO (an empty dict otherwise, so
        reports of guests without MMIO are unchanged)."""
        if not (self.reads or self.writes or self.replays):
            return {}
        devices = {dev.name: dev.stats() for _, _, dev in self.regions if dev.stats()}
        return {"reads": self.reads, "writes": self.writes, "replays": self.replays, "devices": devices}
