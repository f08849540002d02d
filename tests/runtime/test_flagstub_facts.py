"""Unicorn 2.1.4 / Keystone facts the state-page-free pushf(d)/popf(d) stubs
stand on (patcher/templates.py, "the flags"; docs/benchmarks.md, "Flag stubs
without state-page accesses").  Each on a bare engine:

* lea (32- and 16-bit destinations, scaled index), xchg with memory (32 and 16
  bits), `mov cx, cs`, push/pop cx, bswap and jcxz change no flag, not even the
  lazily computed ones (OF, AF after an add): the pushf(d) stub runs between a
  guest's flag-setting instruction and the flags' use;
* `mov cx, cs` and `lea cx, [...]` write only CX, jcxz (0x67 e3) tests CX only;
* pushfd's image: the IOPL field is the real IOPL (1 at CPL 1, the real one at
  CPL 3), VM (bit 17) reads 0, RF (bit 16) reads as the real RF (Unicorn keeps
  it set and pushes it, unlike hardware), AC (18) and ID (21) are the real ones
  -- at CPL 0 (emulate), 1 and 3 alike; a pushf (66 9c) writes the low word of
  the flags to [esp - 2] only;
* popfd at CPL 1 with IOPL 1 loads IF, AC, ID, DF and the arithmetic flags and
  keeps IOPL 1; at CPL 3 with IOPL 0 it keeps IF and IOPL; a 16-bit popf keeps
  bits 31:16 (AC, ID);
* Keystone: `.byte 0x8d, 0x80; .long K` is `lea eax, [eax + K]` with one length
  for every K the stubs use, and the popf(d) stub's jz/jnz are the same length.
"""
import random

import capstone
import pytest
from unicorn import UC_HOOK_INTR
from unicorn import x86_const as X

from bt.machine import ACCESS_CODE0, ACCESS_DATA0, descriptor
from conftest import assemble
from patcher.stubcache import assemble as ks_assemble
from runtime.quirks import scratch_engine

GDT = 0x600
TABLE = {0x08: ACCESS_CODE0, 0x10: ACCESS_DATA0, 0x18: ACCESS_CODE0 | 1 << 5,
         0x20: ACCESS_DATA0 | 1 << 5, 0x28: ACCESS_CODE0 | 3 << 5, 0x30: ACCESS_DATA0 | 3 << 5}
CODE = 0x1100
STACK = 0x8000
AC, ID, RF, VM = 1 << 18, 1 << 21, 1 << 16, 1 << 17
ARITH = 0x8D5                           # CF PF AF ZF SF OF
SEQUENCES = [
    "lea eax, [eax + 0xfffff000]", ".byte 0x8d, 0x80; .long 0x2000", "lea cx, [ecx*8]",
    "lea cx, [ecx + 0x4000]", "lea cx, [ecx*4]", "push ecx; xchg eax, dword ptr [esp]; pop ecx",
    "push cx; xchg ax, word ptr [esp]; pop cx", "mov cx, cs", "push cx; pop cx", "bswap ecx",
    "mov ecx, 0x10000; jcxz l1; nop; l1: nop", "mov ecx, 0x1; jcxz l1; nop; l1: nop",
]


def run(body: str, flags: int, ring: int = 0, regs: dict | None = None, any_hlt: bool = False):
    """Run `body` then hlt at `ring` (entered by an iretd from CPL 0 with
    EFLAGS `flags`; at ring 0 the flags are written directly).  Returns the
    engine after the hlt (at CPL 1 and 3 the hlt faults: the end; `any_hlt`:
    an earlier hlt in `body` may end it)."""
    uc = scratch_engine(0x200000, 0x9000)
    raw = bytearray(0x38)
    for sel, acc in TABLE.items():
        raw[sel:sel + 8] = descriptor(0, 0xFFFFF, acc | 1)
    uc.mem_write(GDT, bytes(raw))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, len(raw) - 1, 0))
    code = assemble(body + "\nhlt", CODE)
    uc.mem_write(CODE, code)
    for name, value in (regs or {}).items():
        uc.reg_write(getattr(X, "UC_X86_REG_" + name.upper()), value)
    seen = []
    uc.hook_add(UC_HOOK_INTR, lambda uc, intno, _: seen.append(intno) or uc.emu_stop())
    if ring == 0:
        uc.reg_write(X.UC_X86_REG_ESP, STACK)
        uc.reg_write(X.UC_X86_REG_EFLAGS, flags)
        uc.emu_start(CODE, CODE + len(code) - 1, count=200)
        assert seen == []
    else:
        cs, ss = (0x19, 0x21) if ring == 1 else (0x2b, 0x33)
        entry = assemble(f"push {ss:#x}\npush {STACK:#x}\npush {flags:#x}\npush {cs:#x}\n"
                         f"push {CODE:#x}\niretd", 0x1000)
        uc.mem_write(0x1000, entry)
        uc.emu_start(0x1000, CODE + 0x800, count=200)
        assert seen == [13]
        assert any_hlt or uc.reg_read(X.UC_X86_REG_EIP) == CODE + len(code) - 1
    return uc


def reg(uc, name):
    return uc.reg_read(getattr(X, "UC_X86_REG_" + name.upper()))


def word(uc, addr, size=4):
    return int.from_bytes(bytes(uc.mem_read(addr, size)), "little")


@pytest.mark.parametrize("seq", SEQUENCES)
def test_the_stub_instructions_change_no_flag_not_even_lazy_ones(seq):
    rng = random.Random(seq)
    for _ in range(16):
        a, b = rng.getrandbits(32), rng.getrandbits(32)
        op = rng.choice(("add", "sub", "adc", "imul", "xor", "shl"))
        setter = f"mov eax, {a:#x}; mov ebx, {b:#x}; " + (
            f"shl eax, {b & 31 or 1}" if op == "shl" else f"{op} eax, ebx")
        seen = []
        for body in (f"{setter}; pushfd; pop esi", f"{setter}; {seq}; pushfd; pop esi"):
            uc = run(body.replace("; ", "\n"), 0x2, regs={"ecx": rng.getrandbits(32)})
            seen.append(reg(uc, "esi"))
        assert hex(seen[0]) == hex(seen[1]), (seq, op)


def test_16_bit_forms_write_cx_only_and_jcxz_tests_cx():
    uc = run("mov ecx, 0xabcd0123\nmov cx, cs\nmov edx, ecx\nlea cx, [ecx*8]\nlea cx, [ecx + 0x4000]\n"
             "mov esi, ecx", 0x2)
    assert reg(uc, "edx") >> 16 == 0xABCD and reg(uc, "edx") & 0xFFFF == reg(uc, "cs")
    assert reg(uc, "esi") >> 16 == 0xABCD
    uc = run("mov ecx, 0x10000\nmov eax, 1\njcxz t\nmov eax, 2\nt:", 0x2)
    assert reg(uc, "eax") == 1                       # CX = 0, ECX != 0: taken
    uc = run("mov ecx, 0x10001\nmov eax, 1\njcxz t\nmov eax, 2\nt:", 0x2)
    assert reg(uc, "eax") == 2
    assert ks_assemble("jcxz t; t:", 0x1000)[:2] == b"\x67\xe3"


@pytest.mark.parametrize("ring, real_iopl", [(0, 0), (0, 2), (1, 1), (3, 0), (3, 1), (3, 3)])
def test_the_pushfd_image(ring, real_iopl):
    """What pushfd and pushf push, at every CPL the stubs or emulate run at."""
    for extra in (0, AC, ID, AC | ID, RF | AC):
        flags = 0x2 | 0x200 | 0x8D5 & 0x4D5 | real_iopl << 12 | extra
        uc = run("pushfd\npop esi\nmov dword ptr [0x7000], 0xaaaaaaaa\nmov esp, 0x7004\npushf\n"
                 "mov edi, dword ptr [0x7000]", flags, ring)
        image = reg(uc, "esi")
        assert (image >> 12) & 3 == real_iopl
        # VM reads 0; RF, once set, stays set in Unicorn and shows in the image
        # (hardware clears it after one instruction and never pushes it): the
        # stub pushes the real image, so bt shows what emulate's native pushfd
        # shows for the same real state
        assert image & VM == 0 and image & RF == extra & RF
        assert image & (AC | ID) == extra & (AC | ID)
        assert image & 0x200 and image & 0x4D5 == 0x8D5 & 0x4D5
        # pushf (66 9c) writes the low word of the flags into [esp - 2] only
        assert hex(reg(uc, "edi")) == hex((image & 0xFFFF) << 16 | 0xAAAA)


def test_popfd_at_cpl1_loads_if_ac_id_df_and_keeps_iopl_1():
    for popped in (0x2 | 0x200 | AC | ID | 0x400 | 0x8D5, 0x2 | 0x3000, 0x2 | 0x200 | 0x2000 | ID):
        uc = run(f"push {popped:#x}\npopfd\npushfd\npop esi", 0x2 | 1 << 12 | 0x200 | AC, 1)
        assert reg(uc, "esi") == (popped & ~0x3000) | 1 << 12, hex(popped)


def test_popfd_at_cpl3_keeps_if_and_iopl_and_16_bit_popf_keeps_the_top():
    uc = run(f"push {0x2 | 0x3000 | AC:#x}\npopfd\npushfd\npop esi", 0x2 | 0x200, 3)
    assert reg(uc, "esi") == 0x2 | 0x200 | AC
    uc = run("push 0x2\npopf\npushfd\npop esi".replace("push 0x2\npopf", "push 0x2\n.byte 0x66, 0x9d"),
             0x2 | 1 << 12 | AC | ID, 1)
    # the 16-bit popf took the low word (IF off), kept AC, ID and (at CPL 1) IOPL
    assert reg(uc, "esi") == 0x2 | 1 << 12 | AC | ID


def test_keystone_encodes_the_iopl_variants_with_one_length():
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    lengths = set()
    for k in (0xFFFFF000, 0, 0x1000, 0x2000):
        code = ks_assemble(f".byte 0x8d, 0x80; .long {k:#x}", 0x1000)
        (i,) = cs.disasm(code, 0x1000)
        assert i.mnemonic == "lea" and i.op_str.startswith("eax, [eax")
        lengths.add(len(code))
    assert lengths == {6}
    popf = set()
    for a, b in (("jz", "jz"), ("jz", "jnz"), ("jnz", "jz"), ("jnz", "jnz")):
        popf.add(len(ks_assemble(f"test byte ptr [esp + 1], 0x10; {a} x; test byte ptr [esp + 1], 0x20; "
                                 f"{b} y; x: hlt; y: popfd", 0x1000)))
    assert popf == {16}
