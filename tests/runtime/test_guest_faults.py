"""Guest faults stay the guest's (issue 18): descriptor tables outside RAM, a
bad lldt and exception frames pushed outside RAM end every mode as emulate ends (the unmapped access or the guest's
own fault), and never as a VMM error (exit 70)."""
import struct

import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, Ks

from bt.machine import MachineConfig
from conftest import assemble, raw_guest, run

MEM = MachineConfig(mode="emulate").mem_bytes
OPS = 0x200000          # lgdt/lidt operands
IDT = 0x201000
HANDLERS = 0x202000     # one 8-byte handler per vector: ebx = [esp], exit with the vector
GDT = 0x203000
VECTORS = 0x40

# Keystone encodes `lgdt [m]` / `lidt [m]` with a 0x66 prefix (the 24-bit-base
# form): the guests spell the 32-bit forms out (see the fact test below).
LGDT, LIDT = ".byte 0x0f,0x01,0x15\n.int {}\n", ".byte 0x0f,0x01,0x1d\n.int {}\n"


def _table(base, limit):
    return struct.pack("<HI", limit, base) + bytes(2)


_GDT = bytes(8) + struct.pack("<II", 0x0000FFFF, 0x00CF9A00) + struct.pack("<II", 0x0000FFFF, 0x00CF9200)
_IDT = b"".join(struct.pack("<II", (0x08 << 16) | ((HANDLERS + v * 8) & 0xFFFF),
                            ((HANDLERS + v * 8) & 0xFFFF0000) | 0x8E00) for v in range(VECTORS))
_HANDLERS = b"".join(assemble(f"mov ebx,[esp]\nmov al,{v}\nout 0xf4,al\nhlt", HANDLERS + v * 8)
                     for v in range(VECTORS))
_SETUP = ("mov esp, 0x90000\n" + LGDT.format(OPS) + LIDT.format(OPS + 8)
          + "mov ax,0x10\nmov ds,ax\nmov ss,ax\n")
_NEW = OPS + 16         # the case's own table operand

CASES = {
    "lgdt-outside-ram-then-segment-load": (LGDT.format(_NEW) + "mov ax,0x10\nmov ds,ax\n", _table(MEM + 0x10000, 0xFF)),
    "lgdt-past-ram-end-then-segment-load": (LGDT.format(_NEW) + "mov ax,0x10\nmov ds,ax\n", _table(MEM - 8, 0xFF)),
    "lgdt-outside-ram-then-int": (LGDT.format(_NEW) + "int 0x20\n", _table(MEM + 0x10000, 0xFF)),
    "lidt-outside-ram-then-int": (LIDT.format(_NEW) + "int 0x20\n", _table(MEM + 0x10000, 0x7FF)),
    "lidt-top-16mib-then-int": (LIDT.format(_NEW) + "int 0x20\n", _table(0xFF000000, 0x7FF)),
    "lidt-past-ram-end-then-int": (LIDT.format(_NEW) + "int 0x20\n", _table(MEM - 0x100, 0x7FF)),
    "lldt-with-gdt-outside-ram": (LGDT.format(_NEW) + "mov ax,0x18\nlldt ax\n", _table(MEM + 0x10000, 0xFF)),
    "lldt-selector-past-gdt-limit": ("mov ax,0x400\nlldt ax\n", b""),
    "lldt-not-an-ldt-descriptor": ("mov ax,0x10\nlldt ax\n", b""),
    "lldt-ldt-selector": ("mov ax,0x0c\nlldt ax\n", b""),
    "lldt-null": ("xor eax,eax\nlldt ax\n", b""),
    # The CPU pushes an exception's frame itself: a stack outside RAM is an unmapped access.
    "ud2-with-stack-outside-ram": (f"mov esp, {MEM + 0x10000:#x}\nud2\n", b""),
    "int-with-stack-outside-ram": (f"mov esp, {MEM + 0x10000:#x}\nint 0x20\n", b""),
    "ud2-with-frame-across-ram-end": (f"mov esp, {MEM + 4:#x}\nud2\n", b""),
    "int-with-stack-in-the-top-16mib": ("mov esp, 0xFF800000\nint 0x20\n", b""),
    # Paging switched on with a CR3 that maps nothing the CPU can fetch from.
    "paging-on-with-cr3-outside-ram": (f"mov eax, {MEM + 0x100000:#x}\nmov cr3, eax\nmov eax, cr0\n"
                                       "or eax, 0x80000000\nmov cr0, eax\nnop\n", b""),
    "paging-on-with-an-empty-directory": ("mov eax, 0x300000\nmov cr3, eax\nmov eax, cr0\n"
                                          "or eax, 0x80000000\nmov cr0, eax\nnop\n", b""),
}


def _image(case):
    body, operand = CASES[case]
    ops = _table(GDT, len(_GDT) - 1) + _table(IDT, len(_IDT) - 1) + operand
    return raw_guest(_SETUP + body + "mov al,0\nout 0xf4,al\n",
                     [(OPS, ops), (IDT, _IDT), (HANDLERS, _HANDLERS), (GDT, _GDT)])


def _ending(result):
    return result.exit_status, str(result.reason), result.message, result.regs


@pytest.mark.parametrize("case", sorted(CASES))
def test_trap_and_bt_end_as_emulate(case):
    _, want = run(_image(case), "emulate", max_instructions=10_000)
    assert want.exit_status != 70, want.message
    for mode in ("trap", "bt"):
        _, got = run(_image(case), mode, max_instructions=10_000)
        assert _ending(got) == _ending(want), mode


@pytest.mark.parametrize("case, status, reason", [
    ("lidt-top-16mib-then-int", 125, "unmapped-access"),
    ("lgdt-outside-ram-then-segment-load", 125, "unmapped-access"),
    ("lldt-selector-past-gdt-limit", 13, "debug-exit"),     # #GP reaches the guest's handler
    ("lldt-null", 0, "debug-exit"),
    ("ud2-with-stack-outside-ram", 125, "unmapped-access"),
    ("ud2-with-frame-across-ram-end", 125, "unmapped-access"),
])
def test_emulate_ends_as_the_cpu(case, status, reason):
    _, r = run(_image(case), "emulate", max_instructions=10_000)
    assert (r.exit_status, str(r.reason)) == (status, reason), r.message


def test_keystone_lgdt_gets_an_operand_size_prefix():
    """Fact: why the guests above encode lgdt/lidt by hand."""
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    assert bytes(ks.asm("lgdt [0x200000]", 0)[0])[:1] == b"\x66"
    assert bytes(ks.asm("lidt [eax]", 0)[0])[:1] == b"\x66"
