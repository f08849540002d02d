"""Unicorn 2.1.4: which instructions end a translated block (docs/fidelity.md,
"Exact virtual time: why demo probe-flags differs by 364").  The instructions
that may raise IF -- popfd, sti, iretd -- end their block, so a block hook sees
the instruction after them start a block of its own: the place where an
interrupt that waits could be injected exactly, as the CPU takes it.  cli does
not end its block (it cannot make an interrupt deliverable)."""
import ctypes

import pytest
from unicorn import UC_HOOK_BLOCK

from conftest import assemble
from runtime.quirks import scratch_engine

BODY = {
    "popfd": "push 0x202\npopfd",
    "sti": "sti",
    "iretd": "push 0x202\npush 0x08\nlea eax, [after]\npush eax\niretd\nafter:",
    "cli": "cli",
}


@pytest.mark.parametrize("insn, ends", [("popfd", True), ("sti", True), ("iretd", True), ("cli", False)])
def test_instructions_that_may_raise_if_end_their_block(insn, ends):
    src = f"mov ebx, 1\n{BODY[insn]}\nmark:\nmov ecx, 2\nmov edx, 3\nhlt"
    code = assemble(src, 0x1000)
    mark = 0x1000 + len(assemble(f"mov ebx, 1\n{BODY[insn]}", 0x1000))
    uc = scratch_engine(0x200000, 0x9000)
    uc.mem_write(0x1000, code)
    starts = []
    uc.hook_add(UC_HOOK_BLOCK, lambda uc, addr, size, _: starts.append(addr))
    uc.emu_start(0x1000, 0x1000 + len(code) - 1)
    assert (mark in starts) is ends, (hex(mark), [hex(a) for a in starts])


def test_the_instruction_in_the_sti_shadow_runs_alone_with_hflags_bit_3_set():
    """runtime/_clock.c's interrupt window: the block after sti is that one
    instruction, entered with QEMU's HF_INHIBIT_IRQ (hflags bit 3) set and IF
    in the calibrated EFLAGS field; the next block starts with the bit clear.
    popfd's next block starts outside any shadow."""
    import struct

    from runtime.quirks import HF_INHIBIT_IRQ, calibrate
    off = calibrate()
    src = "mov ebx, 1\nsti\nshadow:\nmov ecx, 2\nafter:\nmov edx, 3\ncli\npush 0x202\npopfd\nlast:\nmov eax, 1\nhlt"
    code = assemble(src, 0x1000)
    uc = scratch_engine(0x200000, 0x9000)
    uc.mem_write(0x1000, code)
    seen = []

    def hook(uc, addr, size, _):
        ctx = uc.context_save()
        raw = bytes(ctypes.string_at(ctx.context.value, off.hflags + 8))
        fl, hf = struct.unpack_from("<I", raw, off.eflags)[0], struct.unpack_from("<I", raw, off.hflags)[0]
        seen.append((addr - 0x1000, size, bool(fl & 0x200), bool(hf & HF_INHIBIT_IRQ)))
    uc.hook_add(UC_HOOK_BLOCK, hook)
    uc.emu_start(0x1000, 0x1000 + len(code) - 1)
    # mov ebx (5) + sti (1) | mov ecx (5) alone, inhibited | mov edx, cli, push, popfd (12) | mov eax, hlt
    assert seen == [(0, 6, False, False), (6, 5, True, True), (11, 12, True, False), (23, 5, True, False)]


@pytest.mark.parametrize("hooked", [False, True])
def test_a_stop_from_an_out_hook_lands_after_it_only_where_a_code_hook_is(hooked):
    """runtime/_clock.c stop_after_io: Unicorn checks for a stop request between
    instructions only where a code hook is; otherwise the block runs to its end."""
    from unicorn import UC_HOOK_CODE, UC_HOOK_INSN
    from unicorn import x86_const as X
    code = assemble("mov al, 1\nout 0x80, al\ninc ebx\ninc ebx\nmov ecx, 5\nhlt", 0x1000)
    uc = scratch_engine(0x200000, 0x9000)
    uc.mem_write(0x1000, code)
    uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, value, _: uc.emu_stop(), None, 1, 0, X.UC_X86_INS_OUT)
    if hooked:
        uc.hook_add(UC_HOOK_CODE, lambda *a: None, None, 0x1004, 0x1004)   # the inc after out
    uc.emu_start(0x1000, 0x1000 + len(code))
    assert (uc.reg_read(X.UC_X86_REG_EBX), uc.reg_read(X.UC_X86_REG_EIP)) == ((0, 0x1004) if hooked else (2, 0x100c))
