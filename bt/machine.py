"""The pc32 virtual machine: what a guest can rely on at boot.

This module is the single description of the machine (docs/machine.md is its
prose form).  The runtime builds the machine from it; image loaders read the
addresses of the boot structures from it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from bt.errors import BadInput
from bt.mode import Mode

from bt.x86 import CR0_ET, CR0_PE, DESC_CODE, DESC_DPL_SHIFT, DESC_PRESENT, DESC_RW, DESC_S, EFLAGS_FIXED_ONE

MIB = 1 << 20

# Boot-time structures the VMM places in guest RAM (all below 1 MiB, in the
# area a PC BIOS would use, so guests that load at 1 MiB never collide with them).
BOOT_GDT_ADDR = 0x0500        # flat GDT loaded at boot
MULTIBOOT_INFO_ADDR = 0x9000  # multiboot information structure (+ mmap, cmdline)
BOOT_PARAMS_ADDR = 0x7000     # Linux boot_params ("zero page")
BOOT_CMDLINE_ADDR = 0x20000   # Linux command line

# Boot selectors of raw/ELF/multiboot images.
BOOT_CS = 0x08
BOOT_DS = 0x10

BOOT_EFLAGS = EFLAGS_FIXED_ONE
BOOT_CR0 = CR0_PE | CR0_ET
MULTIBOOT_EAX = 0x2BADB002

DEFAULT_MEM_MIB = 64

# The hypervisor area's default base (trap and bt; 4 MiB, one directory slot):
# slot 0x3FA, just below the APIC window (bt.x86.APIC_WINDOW, slot 0x3FB).  Not
# 0xFF000000, where QEMU's pc-testdev puts 64 KiB of test RAM that
# kvm-unit-tests uses (PC_TESTDEV_RAM), and not the top 4 MiB, where a PC has
# its firmware.  Debian's 686 kernel leaves the slot free (docs/paging-plan.md,
# "Default placement"); a guest that uses it gets the area moved
# (runtime/areamove.py).  docs/machine.md, "The physical map".
DEFAULT_HYPER_BASE = 0xFE800000

# pc-testdev's RAM (runtime/devices/pctestdev.py), where QEMU puts it.
PC_TESTDEV_RAM = (0xFF000000, 0x10000)
DEFAULT_CPU_MHZ = 100
PIT_HZ = 1_193_182

ACCESS_CODE0 = DESC_PRESENT | DESC_S | DESC_CODE | DESC_RW    # 0x9A: ring-0 code, readable
ACCESS_DATA0 = DESC_PRESENT | DESC_S | DESC_RW                # 0x92: ring-0 data, writable
ACCESS_CODE3 = ACCESS_CODE0 | 3 << DESC_DPL_SHIFT            # 0xFA
ACCESS_DATA3 = ACCESS_DATA0 | 3 << DESC_DPL_SHIFT            # 0xF2


def descriptor(base: int, limit: int, access: int, flags: int = 0xC) -> bytes:
    """An 8-byte segment descriptor (flags 0xC = 4 KiB granularity, 32-bit)."""
    return struct.pack(
        "<HHBBBB",
        limit & 0xFFFF,
        base & 0xFFFF,
        (base >> 16) & 0xFF,
        access,
        ((limit >> 16) & 0xF) | (flags << 4),
        (base >> 24) & 0xFF,
    )


def flat_gdt_bytes(cs: int = BOOT_CS, ds: int = BOOT_DS) -> bytes:
    """A flat GDT with ring-0 code at `cs`, ring-0 data at `ds`, and ring-3 code
    and data in the two slots after the higher of them."""
    top = max(cs, ds)
    slots = {cs: ACCESS_CODE0, ds: ACCESS_DATA0, top + 8: ACCESS_CODE3, top + 16: ACCESS_DATA3}
    out = bytearray(top + 24)
    for sel, acc in slots.items():
        out[sel:sel + 8] = descriptor(0, 0xFFFFF, acc)
    return bytes(out)


HIDE_PATCHES = ("every-page", "written-pages")
# What ran before the guest (runtime/firmware.py): "none", devices at reset; "bios",
# the state a PC BIOS leaves a multiboot kernel (PIT ticking, IRQ 0 unmasked, an IVT).
FIRMWARE = ("none", "bios")


@dataclass
class MachineConfig:
    """Options that shape the machine (the `bt-run` flags that are not about the image).

    `mode` may be given as a string ("bt"): it is parsed into a Mode here, so a
    config always holds a Mode."""

    mem_mib: int = DEFAULT_MEM_MIB
    cpu_mhz: int = DEFAULT_CPU_MHZ
    mode: Mode = Mode.EMULATE
    max_instructions: int | None = None
    cmdline: str = ""
    rtc_epoch: int = 1_700_000_000  # fixed wall-clock time shown by the CMOS RTC
    hyper_base: int = DEFAULT_HYPER_BASE    # hypervisor area (trap/bt modes), outside RAM
    # QEMU's pc-testdev (runtime/devices/pctestdev.py: ports 0xE0-0xEB and
    # 0x2000-0x2017, 64 KiB of RAM at 0xFF000000), as kvm-unit-tests' `-device
    # pc-testdev`.  Off by default: a guest of one's own finds nothing there.
    pc_testdev: bool = False
    # The start state: FIRMWARE above (`bt-run --firmware`; docs/machine.md "Boot state").
    firmware: str = "none"
    serial_input: bytes | None = None
    # Scripted serial input: virtual instructions between two bytes (None: 1000
    # bytes per virtual second, runtime/devices/__init__.py).
    serial_input_interval: int | None = None
    # bt mode: patch cli/sti/iretd when the scanner finds them, as PATM did
    # (False: only when they first trap).
    eager_privileged_patches: bool = True
    # bt mode: which pages hide their patch bytes from guest loads (runtime/csam.py
    # `_hide`): "every-page" (the guest reads its own bytes everywhere), or
    # "written-pages" (only pages the guest wrote code on: any read hook sends every
    # guest load through Unicorn's slow path, docs/fidelity.md "Reads of patched code").
    hide_patches: str = "every-page"

    def __post_init__(self):
        self.mode = Mode.parse(self.mode)
        if self.serial_input_interval is not None and (
                isinstance(self.serial_input_interval, bool)
                or not isinstance(self.serial_input_interval, int)
                or self.serial_input_interval <= 0):
            raise BadInput(f"serial_input_interval {self.serial_input_interval!r} "
                           "must be a positive number of instructions")
        if self.hide_patches not in HIDE_PATCHES:
            raise BadInput(f"hide_patches {self.hide_patches!r} must be one of {', '.join(HIDE_PATCHES)}")
        if self.firmware not in FIRMWARE:
            raise BadInput(f"firmware {self.firmware!r} must be one of {', '.join(FIRMWARE)}")
        if not isinstance(self.pc_testdev, bool):
            raise BadInput(f"pc_testdev {self.pc_testdev!r} must be True or False")
        if not isinstance(self.eager_privileged_patches, bool):
            raise BadInput(f"eager_privileged_patches {self.eager_privileged_patches!r} "
                           "must be True or False")

    @property
    def mem_bytes(self) -> int:
        return self.mem_mib * MIB

    @property
    def cpu_hz(self) -> int:
        return self.cpu_mhz * 1_000_000
