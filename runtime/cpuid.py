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


# -- what the model implements beyond cpuid (issue 21: kvm-unit-tests msr.flat, la57.flat) --
# A 32-bit P6 CPU raises #GP(0) on rdmsr/wrmsr of an MSR it does not implement
# and on `mov cr4` setting a bit it does not implement (Intel SDM vol. 2,
# RDMSR/WRMSR and MOV CR; vol. 3 2.5).  Unicorn 2.1.4 is built as x86-64 and
# lets a 32-bit guest reach FS_BASE, GS_BASE, KERNEL_GS_BASE (the next FS access
# then uses the 64-bit base), answers 0 for unknown MSRs and takes any CR4 value
# (tests/runtime/test_cpu_model.py pins both).  The VMM checks against these
# tables in every mode (runtime/emulation.py; under emulate runtime/cpucheck.py).
MTRR_MSRS = frozenset([0xFE, 0x2FF, 0x250, 0x258, 0x259, *range(0x200, 0x210), *range(0x268, 0x270)])
MCE_BANKS = 10                       # Unicorn's MCG_CAP bank count (its MC0_CTL.. MSRs)
MSRS: frozenset[int] = frozenset([
    0x10,                            # TSC (virtual time: runtime/tsc.py)
    0x1B,                            # APIC_BASE (the local APIC)
    0x8B,                            # BIOS_SIGN_ID (microcode revision)
    0xC1, 0xC2, 0x186, 0x187,        # P6 performance counters and event selects (writes ignored)
    0x174, 0x175, 0x176,             # SYSENTER_CS/ESP/EIP
    0x179, 0x17A, 0x17B,             # MCG_CAP, MCG_STATUS, MCG_CTL
    0x1A0,                           # MISC_ENABLE
    0x277,                           # PAT
    0xC0000080,                      # EFER (kept for NXE under PAE: runtime/emulation.py)
    *MTRR_MSRS, *range(0x400, 0x400 + 4 * MCE_BANKS),
])
# CR4 bits the model implements: VME, PVI, TSD, DE, PSE, PAE, MCE, PGE, PCE,
# OSFXSR, OSXMMEXCPT (bits 0-10), and FSGSBASE (16) and OSXSAVE (18) because
# Unicorn's reset CR4 has them set (0x50200, the boot state of every mode:
# runtime/trap.py boot), so a guest's read-modify-write of CR4 keeps them.
# UMIP (11), LA57 (12), VMXE, SMXE, PCIDE, SMEP, SMAP, PKE and the reserved
# bits #GP.
CR4_IMPLEMENTED = 0x7FF | (1 << 16) | (1 << 18)
PMC_COUNTERS = 2                     # rdpmc: ECX 0 and 1 (P6); any other #GP(0)


def msr_implemented(msr: int) -> bool:
    return msr in MSRS


def wrmsr_allowed(msr: int, value: int) -> bool:
    """wrmsr of an implemented MSR: the machine-check banks refuse what the SDM
    (vol. 3, 16.3.2) makes #GP -- MCi_CTL other than all zeros or all ones,
    a nonzero MCi_STATUS -- where Unicorn ignores the write."""
    if not msr_implemented(msr):
        return False
    if 0x400 <= msr < 0x400 + 4 * MCE_BANKS:
        kind = (msr - 0x400) & 3
        if kind == 0:
            return value in (0, 0xFFFFFFFFFFFFFFFF)
        if kind == 1:
            return value == 0
    return True


def cr4_allowed(value: int) -> bool:
    return not value & ~CR4_IMPLEMENTED & 0xFFFFFFFF
