"""Virtual-8086 mode (SDM vol. 3, chapter 20), the same in every mode.

V86 code runs natively in Unicorn at CPL 3 in every mode: no deprivileging is
needed, since a V86 task is already the least privileged code there is, and
Unicorn applies V86's own rules (segment = paragraph, 16-bit code, #GP for
hlt and, with IOPL < 3, for cli/sti/pushf/popf/int n/iret;
tests/runtime/test_v86_facts.py).  What the VMM does:

* Leaving V86: every interrupt and exception reaches the VM's one
  UC_HOOK_INTR unvectored, and runtime/delivery.py builds the frame.  From
  V86 the handler must be a non-conforming DPL-0 code segment (else #GP), the
  frame goes on the ring-0 stack of the guest's TSS and holds GS, FS, DS, ES,
  SS, ESP, EFLAGS, CS, EIP (SDM vol. 3 6.12.1 and 20.3.1.1),
  and DS, ES, FS, GS are null in the handler.  `v86_frame` and `leave` are
  that part; the ring compression of trap/bt enters only through
  `vm.ring_of(0)` and `vm.real_selector` as for any other frame.
* Entering V86: under emulate the guest's own `iretd` at CPL 0 does it
  (Unicorn's helper_iret_protected).  Under trap and bt the guest kernel runs
  at CPL 1, where an iretd ignores EFLAGS.VM: the frame's CS (a paragraph
  number, RPL 0 for most) makes the native iretd fault, bt's iretd stub exits
  on VM, and the emulated iretd (runtime/emulation.py `_iret`) calls `enter`.
  A task switch to a TSS whose EFLAGS has VM set calls `load_task`
  (runtime/taskswitch.py).

Not modelled (docs/fidelity.md): the TSS I/O bitmap in V86 (Unicorn runs V86
port I/O unchecked at every IOPL, so every mode does), CR4.VME/PVI (not in
CPUID; Unicorn has none: the interrupt redirection bitmap is ignored), a 16-bit `iret` into V86, a native
iretd at CPL 1 whose V86 CS happens to name a valid shadow descriptor with
RPL 1 or 2 (it runs as a protected-mode return under trap).
"""
from __future__ import annotations

import struct

from unicorn import x86_const as X

from bt.x86 import VM_BIT

V86_LIMIT = 0xFFFF          # every V86 segment's limit
# The frame's extra dwords after EIP, CS, EFLAGS (an iretd with VM=1 pops them).
FRAME_TAIL = ("esp", "ss", "es", "ds", "fs", "gs")
_SEG = {"ss": X.UC_X86_REG_SS, "cs": X.UC_X86_REG_CS, "es": X.UC_X86_REG_ES,
        "ds": X.UC_X86_REG_DS, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS}
_DATA = (X.UC_X86_REG_ES, X.UC_X86_REG_DS, X.UC_X86_REG_FS, X.UC_X86_REG_GS)


def in_v86(uc) -> bool:
    """EFLAGS.VM in the real register: V86 code runs natively in every mode."""
    return bool(uc.reg_read(X.UC_X86_REG_EFLAGS) & VM_BIT)


def v86_frame(uc, return_eip: int, eflags: int) -> list[int]:
    """The nine dwords an interrupt from V86 pushes, lowest address first
    (EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS): the segment registers as the
    paragraph numbers V86 code holds, zero-extended."""
    r = uc.reg_read
    return [return_eip & 0xFFFFFFFF, r(X.UC_X86_REG_CS) & 0xFFFF, eflags & 0xFFFFFFFF,
            r(X.UC_X86_REG_ESP) & 0xFFFFFFFF, r(X.UC_X86_REG_SS) & 0xFFFF,
            r(X.UC_X86_REG_ES) & 0xFFFF, r(X.UC_X86_REG_DS) & 0xFFFF,
            r(X.UC_X86_REG_FS) & 0xFFFF, r(X.UC_X86_REG_GS) & 0xFFFF]


def leave(uc) -> None:
    """Clear VM in the real EFLAGS before delivery loads protected-mode
    selectors (while VM is set a reg_write of a segment is a V86 load); the
    caller then forces the handler's CPL and loads SS and CS."""
    uc.reg_write(X.UC_X86_REG_EFLAGS, uc.reg_read(X.UC_X86_REG_EFLAGS) & ~VM_BIT)


def null_data_segments(uc) -> None:
    """DS, ES, FS, GS are null in a handler entered from V86 (SDM 6.12.1)."""
    for r in _DATA:
        uc.reg_write(r, 0)


def enter(mode, eip: int, eflags: int, segs: dict, esp: int) -> None:
    """An iretd into V86 (trap and bt: runtime/emulation.py `_iret`): CS:EIP,
    ESP and the frame's segments."""
    load_task(mode, segs, eflags)
    mode.uc.reg_write(X.UC_X86_REG_ESP, esp & 0xFFFFFFFF)
    mode.uc.reg_write(X.UC_X86_REG_EIP, eip & 0xFFFF)


def load_task(mode, segs: dict, eflags: int) -> None:
    """Put the CPU into V86 with `eflags` (VM set) and these segments: the
    real EFLAGS first, so each segment write is a V86 load (base = selector
    * 16) and SS's makes the CPL 3 (tests/runtime/test_v86_facts.py).  The
    real EFLAGS are the guest's in V86, IOPL included: V86's own rules for
    cli/sti/pushf/popf/int n read it (trap's `set_guest_eflags` writes them
    whole at CPL 3)."""
    uc = mode.uc
    flags = (eflags | VM_BIT | 2) & 0xFFFFFFFF
    uc.reg_write(X.UC_X86_REG_EFLAGS, flags)
    mode.set_guest_eflags(flags)
    for name in ("ss", "cs", "es", "ds", "fs", "gs"):
        uc.reg_write(_SEG[name], segs[name] & 0xFFFF)


def pop_iret_tail(data: bytes) -> dict:
    """ESP, SS, ES, DS, FS, GS from the 24 bytes above an iretd's EIP/CS/EFLAGS."""
    return dict(zip(FRAME_TAIL, struct.unpack("<6I", data)))
