"""The virtual CPU's identity: cpuid answers come from this table, never from the
host, so a run is deterministic and the same on every machine.

The model is a plain P6-class i686 ("GenuineIntel", family 6 model 8) with the
features an i686 kernel needs (FPU, PSE, TSC, MSR, CX8, PGE, CMOV, MMX, FXSR,
SSE, SSE2), the on-chip local APIC (runtime/devices/lapic.py: an xAPIC at
0xFEE00000; no x2APIC, no TSC-deadline timer), and none that would need devices
or instructions the VMM does not model (no SEP/sysenter, no PAE, no MTRR).
"""
from __future__ import annotations

FEATURES_EDX = (
    (1 << 0)     # FPU
    | (1 << 3)   # PSE
    | (1 << 4)   # TSC
    | (1 << 5)   # MSR
    | (1 << 8)   # CX8
    | (1 << 9)   # APIC (Linux's default command line says nolapic and ignores it)
    | (1 << 13)  # PGE
    | (1 << 15)  # CMOV
    | (1 << 23)  # MMX
    | (1 << 24)  # FXSR
    | (1 << 25)  # SSE
    | (1 << 26)  # SSE2
)

_VENDOR = b"GenuineIntel"
_V = [int.from_bytes(_VENDOR[i:i + 4], "little") for i in (0, 4, 8)]

# leaf -> (eax, ebx, ecx, edx)
LEAVES: dict[int, tuple[int, int, int, int]] = {
    0x0: (0x1, _V[0], _V[2], _V[1]),
    0x1: (0x00000683, 0x00000000, 0x00000000, FEATURES_EDX),
    0x80000000: (0x80000000, 0, 0, 0),
}


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """Answer a cpuid query. Unknown basic leaves answer as the highest basic leaf
    does on Intel parts; unknown extended leaves answer zeros."""
    if leaf in LEAVES:
        return LEAVES[leaf]
    if leaf < 0x80000000:
        return LEAVES[max(k for k in LEAVES if k < 0x80000000)]
    return (0, 0, 0, 0)
