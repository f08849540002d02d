"""Unicorn facts behind kvm-unit-tests emulator.flat's failures under emulate
(docs/fidelity.md, "kvm-unit-tests"): pinned so a Unicorn that changes them
shows here first."""
from unicorn import UC_HOOK_INTR
from unicorn import x86_const as X

from conftest import assemble
from runtime.quirks import scratch_engine

CODE = 0x1000


def _run(src: str, count: int):
    uc = scratch_engine(0x10000, 0x8000)
    code = assemble(src, CODE)
    uc.mem_write(CODE, code)
    seen = []

    def on_intr(uc, intno, _ud):
        seen.append((intno, uc.reg_read(X.UC_X86_REG_EIP)))
        uc.emu_stop()
    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(CODE, CODE + len(code), count=count)
    return uc, seen


def test_a_misaligned_movaps_store_raises_no_gp():
    """The SDM: movaps with a memory operand not 16-byte aligned raises #GP(0).
    Unicorn (QEMU's TCG) does not check: the store lands (emulator.flat's
    "unaligned movaps exception" fails under emulate)."""
    uc, seen = _run("""
        mov eax, 0x11223344
        movd xmm0, eax
        movaps xmmword ptr [0x3008], xmm0
        nop
    """, 4)
    assert seen == []
    assert uc.mem_read(0x3008, 4) == bytes.fromhex("44332211")


def test_an_instruction_breakpoint_right_after_mov_ss_fires():
    """On Intel CPUs a code breakpoint on the instruction after `mov ss` is not
    taken (MOV-SS blocking; emulator.flat expects 0 #DBs on a GenuineIntel
    CPU).  Unicorn takes it: #DB (vector 1) at that instruction."""
    uc, seen = _run(f"""
        mov eax, target
        mov dr0, eax
        mov eax, 0x00000602        # G0 | GE | bit 10, RW0 = 00 (execute), LEN0 = 00
        mov dr7, eax
        mov eax, ss
        mov ss, eax
    target:
        xor eax, eax
        nop
    """, 8)
    target = CODE + len(assemble("mov eax, 0x0\nmov dr0, eax\nmov eax, 0x602\nmov dr7, eax\n"
                                 "mov eax, ss\nmov ss, eax", CODE))
    assert seen == [(1, target)]
