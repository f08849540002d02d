"""A ring-0 guest that leaves protected mode, takes `int n` and a #DE through
its real-mode IVT, returns from both with iret, re-enters protected mode and
reports what the handlers saw (runtime/realmode.py): the frame (IP, CS, FLAGS
as 16-bit words), the handler's FLAGS (IF and TF clear), the faulting IP.
Under trap and bt the guest runs natively at real CPL 0 from the `mov cr0`
that clears PE until it is back in protected mode (runtime/realswitch.py), and
the result is emulate's; under bt CSAM never scans the 16-bit code
(runtime/bt.py, "16-bit code"), and stores real-mode code makes over patched
bytes are seen when protected mode runs them again."""
import struct

import pytest
from keystone import Ks, KS_ARCH_X86, KS_MODE_16, KS_MODE_32

from bt.demos import REAL_MODE_GDT, TO_REAL_MODE, program_image
from bt.machine import MachineConfig
from bt.hyper_layout import REAL_IOPL_CPL1
from bt.x86 import IF_BIT, IOPL_MASK, TF_BIT
from runtime.vm import VM

MODES = ("emulate", "trap", "bt")
RM_CODE = 0x6000            # the 16-bit blob (CS = 0 in real mode)
PM_BACK = 0x6800            # 32-bit code the blob's far jump back lands on
RESULTS = 0x5F80            # what the handlers record
SAVED = 0x5FF0              # main's return address and ESP
IVT_DESCR = 0x5FE0          # limit 0x3FF, base 0
LOOP = 30_000               # protected-mode work after the return: past trap's first native slice
SITE = 0x7000               # a patched protected-mode function the real-mode code rewrites
OLD_IMM, NEW_IMM = 0x11111111, 0x22222222
# pushfd is jump-patched when scanned: the stub covers all three instructions
# (the imm32 included) until a store over them is seen.
SITE_SRC = f"""
    pushfd
    pop eax
    mov eax, {OLD_IMM:#x}
    ret
"""
# Real-mode code (DS = 0) storing the new imm32 over the patched bytes.
REWRITE = f"""
    mov dword ptr [{SITE + 3:#x}], {NEW_IMM:#x}
"""

# Selector 0x18: 16-bit code, base 0, limit 0xFFFF; 0x20: 16-bit data.
GDT = list(REAL_MODE_GDT)

# Up to the far jump into real mode; `rm_entry` follows it (its address is
# computed: Keystone refuses far jumps to labels).
RM_PREFIX = TO_REAL_MODE
RM_BODY = f"""
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x5f00
    lidt [{IVT_DESCR:#x}]
    mov word ptr [0x200], h_int
    mov word ptr [0x202], {{RM_SEG}}
    mov word ptr [0], h_de
    mov word ptr [2], {{RM_SEG}}
{{REWRITE}}
    mov cx, {{RM_LOOP}}
rm_spin:
    add ax, 0x1234
    dec cx
    jnz rm_spin
    mov bx, 0x1111
    sti
    int 0x80
    cli
    mov ax, 7
    xor cl, cl
    div cl
    mov [{RESULTS + 10:#x}], bx
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xea
    .long {PM_BACK:#x}
    .word 0x08
h_int:
    push bp
    mov bp, sp
    mov ax, [bp + 2]
    mov [{RESULTS:#x}], ax
    mov ax, [bp + 4]
    mov [{RESULTS + 2:#x}], ax
    mov ax, [bp + 6]
    mov [{RESULTS + 4:#x}], ax
    pushf
    pop ax
    mov [{RESULTS + 6:#x}], ax
    inc bx
    pop bp
    iret
h_de:
    push bp
    mov bp, sp
    mov ax, [bp + 2]
    mov [{RESULTS + 8:#x}], ax
    add word ptr [bp + 2], 2
    pop bp
    iret
"""
PM_BACK_SRC = f"""
    mov eax, 0x10
    mov ds, eax
    mov es, eax
    mov fs, eax
    mov gs, eax
    mov ss, eax
    mov esp, dword ptr [{SAVED + 4:#x}]
    mov eax, dword ptr [{SAVED:#x}]
    jmp eax
"""


def _blobs(rm_loop: int, seg: int, rewrite: bool = False) -> tuple[bytes, bytes]:
    """The real-mode part runs with CS = `seg` (its labels are offsets from seg * 16)."""
    ks16 = Ks(KS_ARCH_X86, KS_MODE_16)
    prefix = bytes(ks16.asm(RM_PREFIX, RM_CODE)[0])
    entry = RM_CODE + len(prefix) + 5 - seg * 16        # past `ljmp seg:entry` (ea iw iw)
    far = b"\xea" + struct.pack("<HH", entry, seg)
    src = RM_BODY.replace("{RM_LOOP}", str(rm_loop)).replace("{RM_SEG}", str(seg))
    src = src.replace("{REWRITE}", REWRITE if rewrite else "")
    body = bytes(ks16.asm(src, entry)[0])
    back = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(PM_BACK_SRC, PM_BACK)[0])
    return prefix + far + body, back


def _bytes(data: bytes) -> str:
    return "\n".join("    .byte " + ", ".join(f"{b:#x}" for b in data[i:i + 16])
                     for i in range(0, len(data), 16))


def _image(rm_loop: int = 1000, seg: int = 0, rewrite: bool = False):
    """`rewrite`: main calls SITE before the switch (scanned, patched) and
    after the return (EBP: its EAX); the real-mode code rewrites its imm32."""
    rm, back = _blobs(rm_loop, seg, rewrite)
    site = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(SITE_SRC, SITE)[0])
    call_site = f"mov eax, {SITE:#x}\n    call eax" if rewrite else ""
    gdt = b"".join(struct.pack("<Q", d) for d in GDT)
    main = f"""
main:
    mov esi, rm_blob
    mov edi, {RM_CODE:#x}
    mov ecx, {len(rm)}
    .byte 0xf3, 0xa4
    mov esi, back_blob
    mov edi, {PM_BACK:#x}
    mov ecx, {len(back)}
    .byte 0xf3, 0xa4
    mov esi, site_blob
    mov edi, {SITE:#x}
    mov ecx, {len(site)}
    .byte 0xf3, 0xa4
    {call_site}
    mov dword ptr [{IVT_DESCR:#x}], 0x3ff
    mov word ptr [{IVT_DESCR + 4:#x}], 0
    mov dword ptr [{SAVED:#x}], back32
    mov dword ptr [{SAVED + 4:#x}], esp
    .byte 0x0f, 0x01, 0x15
    .long rm_gdtr
    .byte 0xea
    .long {RM_CODE:#x}
    .word 0x18
back32:
    {call_site}
    mov ebp, eax
    mov ecx, {LOOP}
spin:
    dec ecx
    jnz spin
    pushfd
    pop edi
    mov ebx, dword ptr [{RESULTS:#x}]
    mov ecx, dword ptr [{RESULTS + 4:#x}]
    mov edx, dword ptr [{RESULTS + 8:#x}]
    mov eax, cr0
    mov esi, eax
    xor eax, eax
    ret
rm_gdtr:
    .word {len(gdt) - 1}
    .long rm_gdt
rm_gdt:
{_bytes(gdt)}
rm_blob:
{_bytes(rm)}
back_blob:
{_bytes(back)}
site_blob:
{_bytes(site)}
"""
    return program_image(main, "realmode"), rm


def _run(mode: str, rm_loop: int = 1000, seg: int = 0, rewrite: bool = False):
    image, rm = _image(rm_loop, seg, rewrite)
    r = VM(image, MachineConfig(mode=mode, mem_mib=8), stdout=None).run()
    assert r.exit_status == 0, (mode, r.reason, r.message)
    return r, rm


def test_int_and_fault_through_the_ivt_under_emulate():
    r, rm = _run("emulate")
    regs = r.regs
    after_int = RM_CODE + rm.index(b"\xcd\x80") + 2
    div_at = RM_CODE + rm.index(b"\xf6\xf1")
    assert regs["ebx"] & 0xFFFF == after_int            # the frame's IP: past the int
    assert regs["ebx"] >> 16 == 0                       # the frame's CS
    frame_flags, handler_flags = regs["ecx"] & 0xFFFF, regs["ecx"] >> 16
    assert frame_flags & IF_BIT                         # IF as it was (sti)
    assert not handler_flags & (IF_BIT | TF_BIT)        # cleared by the delivery
    assert regs["edx"] & 0xFFFF == div_at               # #DE: IP at the faulting div
    assert regs["edx"] >> 16 == 0x1112                  # the int handler ran once
    assert regs["esi"] & 1                              # back in protected mode
    assert r.counters["exceptions_delivered"] == {"0x80": 1, "0x0": 1}


def test_trap_agrees_with_emulate_and_returns_to_ring_1():
    ref, _ = _run("emulate")
    r, _ = _run("trap")
    for reg in ("ebx", "ecx", "edx", "esi", "eip", "eflags"):
        assert r.regs[reg] == ref.regs[reg], reg
    # EDI: a pushfd after the return, at ring 1 again: it shows the real IOPL 1
    # (trap's documented hole, docs/fidelity.md), emulate's the guest's 0.
    assert ref.regs["edi"] & IOPL_MASK == 0
    assert r.regs["edi"] == ref.regs["edi"] | REAL_IOPL_CPL1
    assert r.retired == ref.retired
    assert r.counters["exceptions_delivered"] == ref.counters["exceptions_delivered"]
    # One native stretch, ended once the guest was back in protected mode
    # (the rest of the run at ring 1: `mov eax, cr0` was emulated there).
    assert r.extra["real_mode"] == {"entries": 1, "exits": 1, "native_at_end": False}
    assert r.counters["faults_emulated"].get("mov", 0) >= 2


def test_bt_agrees_with_emulate_through_a_native_stretch():
    """bt runs the real-mode part in trap's native stretch and the 16-bit
    protected-mode part at ring 1 unscanned (runtime/bt.py, "16-bit code"):
    every register ends as under emulate (EDI too: bt's pushfd stub shows
    the guest's IOPL), the count is emulate's, and the stretch ended before
    any patched protected-mode code ran at real CPL 0."""
    ref, _ = _run("emulate")
    r, _ = _run("bt")
    assert r.regs == ref.regs
    assert r.retired == ref.retired
    assert r.counters["exceptions_delivered"] == ref.counters["exceptions_delivered"]
    assert r.extra["real_mode"] == {"entries": 1, "exits": 1, "native_at_end": False}
    # The protected-mode code after the return was scanned and patched at ring 1.
    assert r.extra["patches"]["installed"].get("pushfd") == 1


def test_bt_sees_real_mode_stores_over_a_patched_site():
    """SITE's pushfd is jump-patched before the switch (its stub holds a copy
    of `mov eax, OLD_IMM`); real-mode code stores NEW_IMM over the imm32.  The
    code-write hooks mark the page during the stretch, so the patch is removed
    before protected mode runs SITE again, and the new bytes run."""
    ref, _ = _run("emulate", rewrite=True)
    assert ref.regs["ebp"] == NEW_IMM
    r, _ = _run("bt", rewrite=True)
    assert r.regs == ref.regs and r.retired == ref.retired
    assert r.extra["patches"]["removed"] >= 1
    assert r.extra["csam"]["smc_invalidations"] >= 1
    assert r.extra["patches"]["installed"].get("pushfd", 0) >= 2    # before, and again after


@pytest.mark.parametrize("mode", MODES)
def test_16_bit_code_is_counted_instruction_by_instruction(mode):
    """The clock decodes 16-bit blocks as 16-bit code (runtime/_clock.c,
    HF_CS32): 1,000 more turns of `add ax, 0x1234; dec cx; jnz` in real mode are
    exactly 3,000 more instructions (decoded as 32-bit, `add eax, imm32`
    swallows `dec cx` and the jnz's opcode: two a turn, seen)."""
    a, _ = _run(mode, 1000)
    b, _ = _run(mode, 2000)
    assert b.retired - a.retired == 3000


def test_a_slice_may_end_inside_a_16_bit_block():
    """The budget's exact stop re-runs the block to a Unicorn exit at the
    budget's instruction, found by the clock's decoding: decoded as 32-bit the
    exit fell inside an instruction and the re-run never ended (seen, before
    runtime/_clock.c decoded 16-bit code; realmode.flat under trap hung so)."""
    image, rm = _image(10_000)
    loop = RM_CODE + rm.index(bytes.fromhex("053412"))
    for budget in (1500, 1501, 1502):
        cfg = MachineConfig(mode="emulate", mem_mib=8, max_instructions=budget)
        r = VM(image, cfg, stdout=None).run()
        assert r.reason == "budget" and r.retired == budget
        assert r.regs["eip"] in (loop, loop + 3, loop + 4)


def test_a_slice_ending_inside_a_block_of_a_based_code_segment():
    """The same exact stop with real-mode CS = 0x600: the clock knows the
    block by its linear address, and the re-run must start at the offset
    within CS (emu_start's begin is EIP).  Started at the linear address it ran
    zeroed memory at CS base + linear (seen: a BIOS handler at F000:E000,
    runtime/firmware.py, resumed 0xF0000 too far)."""
    image, rm = _image(10_000, seg=0x600)
    loop = RM_CODE + rm.index(bytes.fromhex("053412")) - 0x6000
    for budget in (1500, 1501, 1502):
        cfg = MachineConfig(mode="emulate", mem_mib=8, max_instructions=budget)
        r = VM(image, cfg, stdout=None).run()
        assert r.reason == "budget" and r.retired == budget
        assert r.regs["eip"] in (loop, loop + 3, loop + 4)


@pytest.mark.parametrize("mode", MODES)
def test_slices_cut_anywhere_in_a_based_code_segment(mode):
    """Budgets of 7 instructions cut the run in the middle of blocks all
    through the real-mode part (CS = 0x600): every slice resumes where the
    last stopped, and the guest ends as in one run."""
    from bt import api
    image, _ = _image(300, seg=0x600)
    whole = api.run(image, mode, mem_mib=8)
    cut = api.run(image, mode, mem_mib=8, sample_every=7)
    assert cut.exit_status == whole.exit_status == 0
    assert cut.regs == whole.regs and cut.retired == whole.retired


@pytest.mark.parametrize("mode", MODES)
def test_a_code_segment_with_a_base(mode):
    """The same guest with real-mode CS = 0x600 (base 0x6000, the same
    bytes at offsets from 0): the frame holds IP and CS as offset and
    segment, and every figure but those is as with CS = 0."""
    flat, rm = _run(mode)
    based, _ = _run(mode, seg=0x600)
    assert based.regs["ebx"] == (0x600 << 16) | (flat.regs["ebx"] - 0x6000)
    assert based.regs["edx"] == flat.regs["edx"] - 0x6000
    assert based.regs["ecx"] == flat.regs["ecx"]
    assert based.retired == flat.retired


# `.byte 0x0e`: push cs (Keystone makes `push cs` 66 0e, a 16-bit push).
RF_AFTER_IRET = """
main:
    pushfd
    pop eax
    or eax, 0x10000
    push eax
    .byte 0x0e
    call rf_iret
    jmp rf_after
rf_iret:
    iretd
rf_after:
    pushfd
    pop ebx
    xor eax, eax
    ret
"""


@pytest.mark.parametrize("mode", MODES)
def test_pushf_after_an_iret_that_loaded_rf(mode):
    """An iretd whose frame has RF: the pushfd after it stores RF clear, as
    the CPU's does (Unicorn's stored it: tests/runtime/test_realmode_facts.py;
    runtime/_clock.c clears RF at the start of the next block)."""
    r = VM(program_image(RF_AFTER_IRET, "rf"), MachineConfig(mode=mode, mem_mib=8), stdout=None).run()
    assert r.exit_status == 0, (r.reason, r.message)
    assert not r.regs["ebx"] & 0x10000
    assert not r.regs["eflags"] & 0x10000


# `.byte 0xea`: the far jump back (Keystone refuses far jumps to labels).
PE_OFF = """
main:
    mov eax, cr0
    and eax, 0xfffffffe
    mov cr0, eax
    mov ebx, 0x1234
    add ebx, ebx
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0xea
    .long pm_again
    .word 0x08
pm_again:
    mov eax, 0x10
    mov ds, eax
    mov ss, eax
    pushfd
    pop edi
    xor eax, eax
    ret
"""


@pytest.mark.parametrize("mode", MODES[1:])
def test_32_bit_code_after_clearing_pe(mode):
    """32-bit code that clears PE itself (CS keeps its cached 32-bit
    descriptor): the code up to the far jump back runs in real mode,
    natively under trap and bt (the block check passes real mode at CPL 0:
    runtime/_clock.c `refuse_block`), and the run ends as emulate's."""
    image = program_image(PE_OFF, "pe_off")
    cfg = lambda m: MachineConfig(mode=m, mem_mib=8, max_instructions=100_000)
    ref = VM(image, cfg("emulate"), stdout=None).run()
    r = VM(image, cfg(mode), stdout=None).run()
    assert ref.exit_status == 0 and r.exit_status == 0, (r.reason, r.message)
    assert r.regs["ebx"] == ref.regs["ebx"] == 0x2468
    assert r.retired == ref.retired
    # bt ends the stretch at the first 32-bit block once SS is loaded (the block
    # check refuses it at real CPL 0); trap at a slice boundary, after the run
    # here (runtime/realswitch.py NATIVE_SLICE).
    assert r.extra["real_mode"]["native_at_end"] == (mode == "trap")
