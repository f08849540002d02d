"""Facts about Unicorn 2.1.4 in virtual-8086 mode (EFLAGS.VM) that
runtime/v86.py builds on: an `iretd` at CPL 0 whose frame has VM set enters
V86 itself (QEMU's helper_iret_protected), what leaves V86 code reaches
UC_HOOK_INTR unvectored (like every exception: the VMM's delivery,
runtime/delivery.py, builds the V86 frame), and how reg_write loads segments
while VM is set and after the VMM clears it."""
import struct

import pytest
from keystone import Ks, KS_ARCH_X86, KS_MODE_16, KS_MODE_32
from unicorn import UC_HOOK_INTR, UcError
from unicorn import x86_const as X

from bt.x86 import VM_BIT
from runtime.quirks import Quirks, scratch_engine

V86_CS, V86_SS, V86_DS = 0x4000, 0x4800, 0x5000
ENTRY = 0x1000              # the ring-0 iretd
IOPL3 = 0x3000


def _asm(src: str, mode, at: int = 0) -> bytes:
    code, _ = Ks(KS_ARCH_X86, mode).asm(src, at)
    return bytes(code)


def _enter_v86(v86_src: str, iopl_bits: int = IOPL3):
    """A scratch engine at CPL 0 whose `iretd` pops a 9-dword V86 frame
    (EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS) onto 16-bit code at CS:0."""
    uc = scratch_engine(0x100000, 0x9000)
    uc.mem_write(V86_CS << 4, _asm(v86_src, KS_MODE_16))
    uc.mem_write(ENTRY, _asm("iretd", KS_MODE_32))
    frame = struct.pack("<9I", 0, V86_CS, 0x2 | VM_BIT | iopl_bits, 0x800, V86_SS,
                        V86_DS, V86_DS, 0, 0)
    uc.mem_write(0x9000 - len(frame), frame)
    uc.reg_write(X.UC_X86_REG_ESP, 0x9000 - len(frame))
    events = []

    def on_intr(uc, intno, _):
        events.append((intno, uc.reg_read(X.UC_X86_REG_EIP)))
        uc.emu_stop()
    uc.hook_add(UC_HOOK_INTR, on_intr)
    return uc, events


def _run(uc, count: int):
    uc.emu_start(ENTRY, 0, count=count)


def test_iretd_at_cpl0_with_vm_in_the_frame_enters_v86():
    """Segments become paragraph numbers (base = selector * 16), the code is
    16-bit, the CPL 3 (QEMU's load_seg_vm gives SS DPL 3), VM stays set."""
    uc, events = _enter_v86("mov ax, word ptr [0x10]; mov word ptr es:[0x12], ax; "
                            "push ax; nop")
    uc.mem_write((V86_DS << 4) + 0x10, b"\x34\x12")
    q = Quirks(uc)
    _run(uc, 5)
    assert not events
    assert uc.reg_read(X.UC_X86_REG_EFLAGS) & VM_BIT
    assert uc.reg_read(X.UC_X86_REG_CS) == V86_CS
    assert uc.reg_read(X.UC_X86_REG_SS) == V86_SS
    assert uc.mem_read((V86_DS << 4) + 0x12, 2) == b"\x34\x12"
    assert uc.reg_read(X.UC_X86_REG_ESP) == 0x7FE            # a 16-bit push
    assert uc.mem_read((V86_SS << 4) + 0x7FE, 2) == b"\x34\x12"
    assert q.cpl() == 3
    assert uc.reg_read(X.UC_X86_REG_FS) == 0


def test_int_n_with_iopl3_reaches_the_hook_unvectored_with_eip_past_it():
    uc, events = _enter_v86("nop; int 0x21; nop")
    _run(uc, 4)
    assert events == [(0x21, 3)]
    assert uc.reg_read(X.UC_X86_REG_CS) == V86_CS           # nothing pushed, nothing loaded
    assert uc.reg_read(X.UC_X86_REG_ESP) == 0x800
    assert uc.reg_read(X.UC_X86_REG_EFLAGS) & VM_BIT


@pytest.mark.parametrize("src", ["int 0x21", "hlt", "cli", "pushf"])
def test_iopl_below_3_sensitive_instructions_raise_gp_at_the_instruction(src):
    """int n, cli, sti, pushf, popf, iret with IOPL < 3 and hlt at any IOPL:
    #GP(0) reported with EIP at the instruction (the V86 monitor's case)."""
    uc, events = _enter_v86(f"nop; {src}; nop", iopl_bits=0)
    q = Quirks(uc)
    _run(uc, 4)
    assert events == [(13, 1)]
    assert q.take_fault()[0] == 0


def test_hlt_with_iopl3_is_still_gp():
    uc, events = _enter_v86("hlt", iopl_bits=IOPL3)
    _run(uc, 3)
    assert events == [(13, 0)]


@pytest.mark.parametrize("iopl_bits", [0, IOPL3])
def test_io_in_v86_is_never_checked_by_unicorn(iopl_bits):
    """Not the CPU's rule: V86 port I/O should consult the TSS I/O bitmap (SDM
    20.2.8.1) at any IOPL; Unicorn 2.1.4 runs it unchecked, even with a TSS
    whose bitmap denies every port.  So every mode runs V86 `in`/`out` as
    emulate does (docs/fidelity.md, "Not exact / not modelled")."""
    uc, events = _enter_v86("nop; in al, 0x60; nop; nop", iopl_bits=iopl_bits)
    tss = 0x30000
    uc.mem_write(tss + 0x66, (0x68).to_bytes(2, "little"))
    uc.mem_write(tss + 0x68, b"\xff" * 0x2001)
    uc.reg_write(X.UC_X86_REG_TR, (0x28, tss, 0x68 + 0x2000, 0x8B00))
    _run(uc, 4)
    assert events == []
    assert uc.reg_read(X.UC_X86_REG_EIP) == 4


def test_divide_error_in_v86_is_reported_at_the_instruction():
    uc, events = _enter_v86("xor cl, cl; div cl")
    _run(uc, 4)
    assert events == [(0, 2)]


def test_reg_write_while_vm_is_set_loads_paragraphs_and_protected_loads_need_cpl0():
    """What the VMM's delivery out of V86 does: while VM is set a reg_write of a
    segment is a V86 load (base selector * 16); after clearing VM the CPL is
    still 3, so a ring-0 selector is refused until the CPL is forced to 0."""
    uc, events = _enter_v86("nop; int 0x21")
    q = Quirks(uc)
    _run(uc, 3)
    assert events == [(0x21, 3)]
    uc.reg_write(X.UC_X86_REG_DS, 0x2345)
    uc.mem_write(0x23450, b"\x99")
    uc.reg_write(X.UC_X86_REG_EFLAGS, uc.reg_read(X.UC_X86_REG_EFLAGS) & ~VM_BIT)
    with pytest.raises(UcError):
        uc.reg_write(X.UC_X86_REG_SS, 0x10)
    q.set_cpl(0)
    uc.reg_write(X.UC_X86_REG_SS, 0x10)
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    for r in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
        uc.reg_write(r, 0)
    # 32-bit protected-mode code runs again: a flat store through SS.
    uc.mem_write(0x2000, _asm("mov dword ptr [esp - 4], 0x11223344; nop", KS_MODE_32))
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    uc.emu_start(0x2000, 0, count=2)
    assert uc.mem_read(0x7FFC, 4) == bytes.fromhex("44332211")
    assert q.cpl() == 0


def test_reg_write_of_eflags_with_vm_then_segments_enters_v86_from_the_vmm():
    """What trap and bt do for an iretd or a task switch into V86 at CPL 1:
    EFLAGS with VM first, then each segment register written: V86 loads, the
    CPL 3 from SS (no set_cpl needed), and 16-bit code runs at CS * 16 + IP."""
    uc = scratch_engine(0x100000, 0x9000)
    q = Quirks(uc)
    uc.mem_write((V86_CS << 4) + 0x20, _asm("mov word ptr [0x10], sp; nop", KS_MODE_16))
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2 | VM_BIT | IOPL3)
    for r, v in ((X.UC_X86_REG_SS, V86_SS), (X.UC_X86_REG_CS, V86_CS), (X.UC_X86_REG_DS, V86_DS),
                 (X.UC_X86_REG_ES, 0), (X.UC_X86_REG_FS, 0), (X.UC_X86_REG_GS, 0)):
        uc.reg_write(r, v)
    uc.reg_write(X.UC_X86_REG_ESP, 0x456)
    assert q.cpl() == 3
    uc.emu_start(0x20, 0, count=2)
    assert uc.mem_read((V86_DS << 4) + 0x10, 2) == b"\x56\x04"


@pytest.mark.parametrize("src", ["cli", "sti", "pushf", "int 0x21"])
def test_cr4_vme_changes_nothing_unicorn_has_no_vme(src):
    """With CR4.VME set, IOPL 0: still #GP(0) (a VME CPU would clear VIF, push
    VIF as IF, or redirect the int through the TSS bitmap).  The CPU model does
    not report VME in CPUID (runtime/cpuid.py), so a guest that follows CPUID
    never sets it."""
    uc, events = _enter_v86(f"nop; {src}; nop", iopl_bits=0)
    uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | 1)
    _run(uc, 4)
    assert events == [(13, 1)]
