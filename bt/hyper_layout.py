"""The contract between the patcher's stubs and the VMM: the hypervisor area's
layout and the state page's fields.

Stubs (patcher/) are guest code that reads and writes the virtual CPU state in
place; the runtime (runtime/hyper.py maps the area, runtime/vcpu.py reads the
state page) must agree with them byte for byte.  Both sides read this module,
and neither imports the other.

The hypervisor area is one 4 MiB region (one page-directory entry, so a paging
guest can be given it with a single PDE later) whose base is a parameter
(`MachineConfig.hyper_base`).  Nothing names an absolute hypervisor address:
everything is `base + REGION`, so the area can be relocated by changing the
base and rewriting the fixups the stub cache records (patcher/stubcache.py).

Layout (offsets from the base):
    STATE        one page: the virtual CPU state the stubs read and write (FIELDS)
    SHADOW_IDT   the real IDTR points here; Unicorn never vectors through it, it
                 only has to exist (delivery reads the guest's own IDT)
    VMM_TSS      the real TR: a TSS whose I/O bitmap denies every port
    SHADOW_GDT   the ring-compressed copy of the guest GDT (64 KiB = 8192 entries)
    VMM_STACK    scratch stack for VMM trampolines
    FLAG_TABLES  a byte lookup on a selector's low byte (RPL 1?) for the
                 segment-load and far-jump stubs (flag_tables()).  (pushf(d)
                 no longer needs a table: its stub is assembled for the guest's
                 IOPL, patcher/templates.py IOPL_TEMPLATES.)
    HYPER_PT     a page table mapping the area onto itself: under guest paging the
                 VMM points the area's page-directory slot at it (runtime/paging.py);
                 HYPER_PT_PAE the same as the two tables of a PAE guest's two slots
    SELECTOR_VIEW  a table mapping every real selector to the guest's view of it
                 (RPL 1 -> RPL 0), so stubs translate `mov r, cs` / `push cs`
                 with one load: no flags touched, no stack scratch
    STUBS        the stub cache (patcher), to the end of the area
"""
from __future__ import annotations

import array

from bt.x86 import IOPL_MASK, LARGE_PAGE

HYPER_SIZE = LARGE_PAGE

STATE = 0x0000
SHADOW_IDT = 0x1000
SHADOW_GDT = 0x2000
SHADOW_GDT_SIZE = 0x10000
VMM_TSS = 0x1800
VMM_STACK = 0x12000
VMM_STACK_SIZE = 0x1000
# FLAG_TABLES: byte lookups the flag-free stubs index.
FLAG_TABLES = 0x13000
RPL1_BYTE = FLAG_TABLES + 0x300    # 256 x u8: a selector's low byte -> 1 when its RPL is 1, else 0
FLAG_TABLES_SIZE = 0x1000
HYPER_PT = 0x18000           # 1024 x u32 (non-PAE): entry i maps base + i pages
HYPER_PT_PAE = 0x19000       # 2 x 512 x u64 (PAE): the same mapping as two 2 MiB tables
SELECTOR_VIEW = 0x20000      # 64 Ki x u16: real selector -> the selector the guest sees
SELECTOR_VIEW_SIZE = 0x20000
STUBS = 0x40000
STUBS_SIZE = HYPER_SIZE - STUBS

# The state page: name -> (offset in the page, struct format).  Stub templates
# name fields, never offsets.
FIELDS: dict[str, tuple[int, str]] = {
    "vflags": (0x00, "<I"),      # the guest's IOPL (bits 12-13); written by the VMM only (runtime/vcpu.py)
    "scratch": (0x0C, "<I"),     # stub scratch word
    "cr0": (0x10, "<I"),
    "cr2": (0x14, "<I"),
    "cr3": (0x18, "<I"),
    "cr4": (0x1C, "<I"),
    "gdtr": (0x20, "<HI"),       # sgdt layout: limit then base
    "idtr": (0x28, "<HI"),
    "ldtr": (0x30, "<H"),
    "tr": (0x34, "<H"),
    "dr": (0x40, "<8I"),
    "stub_runs": (0x80, "<I"),   # incremented by every stub that counts itself
    "scratch2": (0x84, "<I"),
    "scratch3": (0x88, "<I"),
    "exit_reason": (0x8C, "<I"),
}

# The EFLAGS bits the "vflags" field holds: the ones ring compression takes
# from the guest kernel.  Only IOPL: the guest's IF is the real IF (the kernel
# runs at CPL 1 with the real IOPL 1, so cli/sti/popfd/iretd change the real IF
# as they change the guest's under emulate; docs/fidelity.md, "IF in the real
# EFLAGS").  At CPL 3 the real EFLAGS are the guest's, IOPL included.
VFLAGS_MASK = IOPL_MASK
# The real IOPL while the guest kernel runs at CPL 1.
REAL_IOPL_CPL1 = 1 << 12


def selector_view_table() -> bytes:
    """The SELECTOR_VIEW contents: ring compression undone, RPL 1 selectors
    read as RPL 0, others unchanged."""
    t = array.array("H", range(0x10000))
    t[1::4] = array.array("H", range(0, 0x10000, 4))    # 4k+1 -> 4k, in one slice (~10 ms as a loop)
    return t.tobytes()


def flag_tables() -> bytes:
    """The FLAG_TABLES contents (offsets relative to FLAG_TABLES).

    RPL1_BYTE tells the segment-load stubs, without a compare, whether a
    selector has RPL 1 (the one RPL ring compression cannot check: issue 15
    cause 6)."""
    out = bytearray(FLAG_TABLES_SIZE)
    for b in range(256):
        out[RPL1_BYTE - FLAG_TABLES + b] = 1 if b & 3 == 1 else 0
    return bytes(out)
