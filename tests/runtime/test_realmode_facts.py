"""Facts about Unicorn 2.1.4 in real mode (CR0.PE clear) that runtime/realmode.py
builds on: how the VMM enters real mode with reg_write, what a segment load does
there, what reaches UC_HOOK_INTR, and where Unicorn differs from the CPU (RF)."""
from keystone import Ks, KS_ARCH_X86, KS_MODE_16
from unicorn import UC_HOOK_INTR, UC_HOOK_CODE
from unicorn import x86_const as X

from runtime.quirks import scratch_engine

CR0_ET = 0x10


def _asm16(src: str, at: int) -> bytes:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_16).asm(src, at)
    return bytes(code)


def _real_engine(code: bytes, at: int, cs: int = 0):
    """A scratch engine switched to real mode by reg_write: CR0.PE clear, then
    CS/SS/DS loaded (a segment load with PE clear gives base = selector * 16)."""
    uc = scratch_engine(0x200000, 0x9000)
    uc.mem_write((cs << 4) + at, code)
    uc.reg_write(X.UC_X86_REG_CR0, CR0_ET)
    for r in (X.UC_X86_REG_CS, X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES):
        uc.reg_write(r, cs if r == X.UC_X86_REG_CS else 0)
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    return uc


def _run(uc, begin: int, count: int):
    events = []

    def on_intr(uc, intno, _):
        events.append((intno, uc.reg_read(X.UC_X86_REG_EIP)))
        uc.emu_stop()
    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(begin, 0, count=count)
    return events


def test_reg_write_enters_real_mode_and_segment_base_is_selector_times_16():
    # mov ax, [0x10] through DS = 0x2000: linear 0x20010.
    code = _asm16("mov ax, word ptr [0x10]", 0x100)
    uc = _real_engine(code, 0x100, cs=0x1000)
    uc.mem_write(0x20010, b"\x34\x12")
    uc.reg_write(X.UC_X86_REG_DS, 0x2000)
    _run(uc, 0x100, 1)      # emu_start's begin is IP, the offset within CS
    assert uc.reg_read(X.UC_X86_REG_CR0) & 1 == 0
    assert uc.reg_read(X.UC_X86_REG_AX) == 0x1234
    assert uc.reg_read(X.UC_X86_REG_EIP) == 0x100 + len(code)
    assert uc.reg_read(X.UC_X86_REG_CS) == 0x1000


def test_int_n_in_real_mode_reaches_the_hook_with_ip_past_it_and_is_not_vectored():
    """Unicorn does not use the IVT either: `int 0x21` is handed to UC_HOOK_INTR
    with IP already past it, nothing pushed, CS:IP unchanged."""
    code = _asm16("int 0x21; nop", 0x100)
    uc = _real_engine(code, 0x100)
    uc.mem_write(0x21 * 4, (0x0500).to_bytes(2, "little") + (0).to_bytes(2, "little"))
    events = _run(uc, 0x100, 2)
    assert events == [(0x21, 0x102)]
    assert uc.reg_read(X.UC_X86_REG_ESP) == 0x8000
    assert uc.reg_read(X.UC_X86_REG_CS) == 0


def test_a_fault_in_real_mode_reaches_the_hook_with_ip_at_the_instruction():
    code = _asm16("xor cx, cx; div cx", 0x100)
    uc = _real_engine(code, 0x100)
    assert _run(uc, 0x100, 2) == [(0, 0x102)]


def test_no_segment_limit_check_in_real_mode():
    """The CPU raises #GP(0) for a word at DS offset 0xFFFF (it crosses the
    real-mode limit 0xFFFF); Unicorn's QEMU checks no segment limits and reads
    the bytes at 0xFFFF and 0x10000.  A known difference (docs/machine.md,
    "Real mode"); nothing in the VMM emulates the limit."""
    code = _asm16("mov ax, word ptr [0xffff]", 0x100)
    uc = _real_engine(code, 0x100)
    uc.mem_write(0xFFFF, b"\x78\x56")
    assert _run(uc, 0x100, 1) == []
    assert uc.reg_read(X.UC_X86_REG_AX) == 0x5678


def test_mov_cr0_clearing_pe_then_far_jump_enters_real_mode_from_protected_mode():
    """The guest's own way: 16-bit protected mode at CPL 0, `mov cr0` without PE,
    a far jump loads CS real-mode style (CS = 0, 16-bit code)."""
    uc = scratch_engine(0x200000, 0x9000)
    # A GDT with a 16-bit code segment (selector 8) and a 16-bit data segment (16).
    gdt = bytes(8) + (0x00009B000000FFFF).to_bytes(8, "little") + (0x000093000000FFFF).to_bytes(8, "little")
    uc.mem_write(0x500, gdt)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x500, len(gdt) - 1, 0))
    code = _asm16("mov eax, cr0; and eax, 0xfffffffe; mov cr0, eax; ljmp 0:0x200", 0x100)
    uc.mem_write(0x100, code)
    uc.mem_write(0x200, _asm16("mov bx, cs; nop", 0x200))
    uc.reg_write(X.UC_X86_REG_CS, 8)
    uc.reg_write(X.UC_X86_REG_SS, 16)
    assert uc.reg_read(X.UC_X86_REG_CR0) & 1
    _run(uc, 0x100, 5)
    assert uc.reg_read(X.UC_X86_REG_CR0) & 1 == 0
    assert uc.reg_read(X.UC_X86_REG_EIP) == 0x202
    assert uc.reg_read(X.UC_X86_REG_BX) == 0


def test_iret_in_real_mode_keeps_rf_from_the_frame_and_pushf_shows_it():
    """Unicorn differs from the CPU here: iretd loads RF from its frame (as the
    CPU does) but pushfd then stores it (the CPU clears RF in the image it
    pushes, and clears RF itself after the next instruction); Unicorn clears RF
    only at the end of the next translated block.  kvm-unit-tests realmode
    "rflags.rf" sees it; runtime/_clock.c clears RF at the next block's start
    (tests/runtime/test_realmode.py, `test_pushf_after_an_iret_that_loaded_rf`)."""
    src = ("pushfd; pop eax; or eax, 0x10000; push eax; .byte 0x66, 0x0e; call l1; jmp l2; "
           "l1: iretd; l2: pushfd; pop ebx; nop")
    code = _asm16(src, 0x100)
    uc = _real_engine(code, 0x100)
    uc.emu_start(0x100, 0x100 + len(code) - 1)     # to the nop (a count would cut the blocks)
    assert uc.reg_read(X.UC_X86_REG_EBX) & 0x10000


def test_hflags_cs32_follows_reg_write_of_cs():
    """QEMU's HF_CS32 (hflags 0x10), which runtime/_clock.c and
    Quirks.code16 read, changes with a reg_write of CS in protected mode
    (runtime/bt.py asks it after the VMM's own far transfers), and is clear
    after one in real mode."""
    from runtime.quirks import Quirks
    uc = scratch_engine(0x200000, 0x9000)
    gdt_base = uc.reg_read(X.UC_X86_REG_GDTR)[1]
    code16 = 0x00009B000000FFFF                     # base 0, limit 0xFFFF, D clear
    uc.mem_write(gdt_base + 0x30, code16.to_bytes(8, "little"))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt_base, 0x37, 0))
    q = Quirks(uc)
    assert q.env is not None
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    assert q.code16() is False
    uc.reg_write(X.UC_X86_REG_CS, 0x30)
    assert q.code16() is True
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    assert q.code16() is False
    uc.reg_write(X.UC_X86_REG_CR0, CR0_ET)
    uc.reg_write(X.UC_X86_REG_CS, 0)
    assert q.code16() is True
