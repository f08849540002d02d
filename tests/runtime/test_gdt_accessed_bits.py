"""The accessed and dirty bits of the entries that map the guest's GDT page
(issue 17: the first RAM difference of Linux under bt was the A bit of that
page's PTE).

Under emulate every selector load reads the descriptor from the guest's table
through the guest's page tables, so the walk sets the directory entry's and the
table entry's A bit, and the descriptor's own accessed-bit write-back sets D.
Under trap and bt the CPU reads the shadow GDT in the hypervisor area instead;
the guard that lets those reads through marks the guest's entries
(runtime/_isolation.c `mark_gdt_read`), and the write-back copied into the
guest's table marks D (runtime/trap.py `_on_shadow_gdt_write`).

The guest keeps its GDT alone in the second 4 MiB of its address space (linear
0x400000 -> physical 0x50000, its own directory entry and page table), so no
other access walks there; before each selector load it clears A and D of both
entries and flushes the TLB entry with invlpg, after it reads them back.  The
loads are the ones a bt stub or the VMM handles: mov ds (a descriptor with the
accessed bit clear, then set), far jmp and far call (ptr16:32), retf, iretd
(to a code descriptor whose accessed bit is clear: far transfers leave it
clear, Unicorn's reg_write sets it: tests/runtime/test_unicorn_facts.py),
lss, mov ss, pop ds; each runs three times, so that under bt the later rounds
run in the patch the first one's fault or scan installed: jump patches whose
stubs run the load natively (mov/pop sreg, far jmp, lss, mov ss), int3 patches
the VMM emulates (far call, iretd: a jump patch is refused next to them here).
"""
from __future__ import annotations

import struct

import pytest

from bt.images.image import GuestImage, Segment
from bt.machine import ACCESS_CODE0, ACCESS_DATA0, descriptor
from bt.x86 import DESC_ACCESSED, PTE_A, PTE_D
from conftest import EXIT, LOAD, assemble

PD, PT0, PT1 = 0x30000, 0x31000, 0x33000
GDT_PHYS, GDT_LIN = 0x50000, 0x400000
OUT = 0x40000
FARPTR = 0x41000
GDTR = 0x42000
PDE1 = PD + 4                      # the directory entry of linear 0x400000-0x7FFFFF
PTE_GDT = PT1                      # the table entry of linear 0x400000
MARK = 0x12345670                  # far pointers' offsets, patched after assembly
# Under bt a site's first run faults (or exits) and is patched; the second and
# third run its stub, and the results kept are the last round's.
ROUNDS = 3

# name, the instructions that load a selector (MARK+k: the far pointer k's offset,
# which becomes the address right after its own instruction)
LOADS = [
    ("mov ds (accessed bit clear)", "mov ax, 0x18\nmov ds, ax\n"),
    ("mov ds", "mov ax, 0x10\nmov ds, ax\n"),
    ("jmp far ptr16:32", ".byte 0xea\n.long {m0}\n.word 0x20\n"),
    ("call far ptr16:32", ".byte 0x9a\n.long {m1}\n.word 0x20\nadd esp, 8\n"),
    ("retf", "mov eax, r{k}\npush 0x20\npush eax\nretf\nr{k}:\n"),
    ("iretd", "mov eax, r{k}\npushfd\npush 0x20\npush eax\niretd\nr{k}:\n"),
    ("lss", f"mov dword ptr [{FARPTR:#x}], esp\nmov word ptr [{FARPTR + 4:#x}], 0x10\n"
            f"lss esp, [{FARPTR:#x}]\n"),
    ("mov ss", "mov ax, 0x10\nmov ss, ax\n"),
    ("pop ds", "push 0x10\npop ds\n"),
]


def _guest() -> GuestImage:
    gdt = (bytes(8) + descriptor(0, 0xFFFFF, ACCESS_CODE0 | DESC_ACCESSED)
           + descriptor(0, 0xFFFFF, ACCESS_DATA0 | DESC_ACCESSED) + descriptor(0, 0xFFFFF, ACCESS_DATA0)
           + descriptor(0, 0xFFFFF, ACCESS_CODE0))
    body = []
    for k, (_, load) in enumerate(LOADS):
        body.append(f"and dword ptr [{PDE1:#x}], 0xffffff9f\n"
                    f"and dword ptr [{PTE_GDT:#x}], 0xffffff9f\n"
                    f"invlpg [{GDT_LIN:#x}]\n"
                    + load.format(k=k, m0=MARK, m1=MARK + 1)
                    + f"mov eax, dword ptr [{PTE_GDT:#x}]\nmov dword ptr [ebx + {8 * k}], eax\n"
                    f"mov eax, dword ptr [{PDE1:#x}]\nmov dword ptr [ebx + {8 * k + 4}], eax\n")
    src = (f"mov esp, 0x90000\nmov eax, {PD:#x}\nmov cr3, eax\nmov eax, cr0\nor eax, 0x80000000\n"
           "mov cr0, eax\n"
           f".byte 0x0f, 0x01, 0x15\n.long {GDTR:#x}\n"     # lgdt [GDTR] (Keystone adds 0x66)
           "mov ax, 0x10\nmov ds, ax\nmov es, ax\nmov ss, ax\n"
           f"mov ebx, {OUT:#x}\nmov ecx, {ROUNDS}\nround:\n" + "".join(body)
           + f"add ebx, {8 * len(LOADS)}\ndec ecx\njnz round\n"
           "xor eax, eax\n" + EXIT + "hlt\n")
    code = bytearray(assemble(src))
    for m in (MARK, MARK + 1):      # the far pointers name the instruction after their own
        at = code.index(struct.pack("<I", m))        # the offset after the opcode; 6 bytes to the end
        code[at:at + 4] = struct.pack("<I", LOAD + at + 6)
    pt0 = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    tables = [(PD, struct.pack("<II", PT0 | 3, PT1 | 3)), (PT0, pt0), (PT1, struct.pack("<I", GDT_PHYS | 3)),
              (GDT_PHYS, gdt), (GDTR, struct.pack("<HI", len(gdt) - 1, GDT_LIN))]
    return GuestImage("gdt-accessed-bits", "raw", LOAD,
                      [Segment(LOAD, bytes(code))] + [Segment(a, d) for a, d in tables])


def _run(mode):
    """{(round, load): (table entry, directory entry)}, the guest's GDT, the result."""
    from runtime.vm import VM
    from bt.machine import MachineConfig
    vm = VM(_guest(), MachineConfig(mode=mode), stdout=None)
    res = vm.run()
    assert res.exit_status == 0, res.message
    n = len(LOADS)
    got = struct.unpack(f"<{2 * n * ROUNDS}I", vm.uc.mem_read(OUT, 8 * n * ROUNDS))
    bits = {(r, name): (got[2 * (r * n + k)], got[2 * (r * n + k) + 1])
            for r in range(ROUNDS) for k, (name, _) in enumerate(LOADS)}
    table = bytes(vm.uc.mem_read(GDT_PHYS, 40))
    return bits, table, res


def test_under_emulate_every_selector_load_sets_the_accessed_bits_of_the_gdt_page():
    """The reference the other modes are held to: the walk to the descriptor sets A
    in both entries; the descriptor's accessed-bit write-back (the first mov ds
    with 0x18) sets D; the far transfers leave their descriptor's bit clear."""
    bits, table, _ = _run("emulate")
    for key, (pte, pde) in bits.items():
        assert pte & PTE_A and pde & PTE_A, (key, hex(pte), hex(pde))
    assert bits[(0, "mov ds (accessed bit clear)")][0] & PTE_D
    assert not bits[(1, "mov ds (accessed bit clear)")][0] & PTE_D
    assert not any(pte & PTE_D for (r, name), (pte, _) in bits.items() if name != "mov ds (accessed bit clear)")
    assert table[0x18 + 5] & DESC_ACCESSED
    assert not table[0x20 + 5] & DESC_ACCESSED


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_the_gdt_page_s_accessed_and_dirty_bits_are_emulate_s(mode):
    want, want_table, ref = _run("emulate")
    got, table, res = _run(mode)
    if mode == "bt":            # the loads ran in their stubs (patcher/templates.py)
        installed = res.extra["patches"]["installed"]
        assert {"jmp_far", "iretd", "lss", "mov_to_sreg", "mov_to_ss", "pop_sreg"} <= set(installed), installed
    hexed = lambda d: {k: (hex(a), hex(b)) for k, (a, b) in d.items()}
    assert hexed(got) == hexed(want)
    assert table.hex() == want_table.hex()        # the descriptors' own accessed bits
    assert res.retired == ref.retired
