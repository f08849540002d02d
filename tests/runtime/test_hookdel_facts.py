"""Unicorn 2.1.4: what a no-op code hook leaves in a translated block once it
is deleted, and what a design with fewer live sync hooks would have to catch.

The clock's no-op sync hooks (runtime/clock.py `_hook_fix_sites`) are there
for what Unicorn's translator emits in front of a hooked instruction: the lazy
flags written back (cmpxchg8b's helper needs them), the call to the hook list's
run-time walk (`helper_uc_tracecode`) and a stop check (a stop asked by the I/O
hook of an in/out takes effect before the next instruction).  All of it is
emitted at translation, so:

* it survives the hook's deletion in every block already translated with the
  site inside it, and the emitted walk then calls whatever code hook covers the
  site at run time, even one added after the translation;
* Unicorn's `uc_hook_del` invalidates the blocks that *start* at the hook's
  address (its hooked_regions), and such a block needs no sync: at a block's
  start the lazy flags are already in the CPU state and the block's entry
  checks for a stop;
* a block translated again after its removal from the cache has no sync;
* a second block for the same address under other CPU flags (IOPL here) is
  translated with no sync and without moving either translation-generation
  counter (runtime/tbgen.py): the clock's generation cannot tell;
* UC_HOOK_EDGE_GENERATED is called for every block tb_find translates once the
  engine ran one block (its `last_tb`), with the new block's address and size,
  so it is the one place a translation without the hook could be seen.

docs/benchmarks.md, "Fewer single-site code hooks".
"""
from __future__ import annotations

import struct

from keystone import Ks, KS_ARCH_X86, KS_MODE_32
from unicorn import (Uc, UC_ARCH_X86, UC_MODE_32, UC_HOOK_CODE, UC_HOOK_INSN,
                     UC_HOOK_EDGE_GENERATED)
from unicorn import x86_const as X

from runtime.tbgen import addresses
from runtime.quirks import _peek

CODE = 0x1000
DATA = 0x8000
RAM = 0x100000
FAR = 0x80000                   # where the other code hook is: nothing runs there


def _asm(src: str) -> bytes:
    return bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(src, CODE)[0])


# `add` leaves the flags lazy; cmpxchg8b's helper then reads a stale state
# unless a code hook made the translator write it back (tests/runtime/test_clock.py)
MID = _asm("""
    mov esi, 0x8000
    mov edi, 0x12345678
    mov eax, 5
    mov edx, 1
    add edi, edi
    cmpxchg8b qword ptr [esi]
    pushfd
    pop ebp
    jmp done
nop; nop; nop; nop; nop; nop; nop; nop
done:
    hlt
""")
SITE = CODE + MID.index(b"\x0f\xc7")
MID_TB = MID.index(b"\x90" * 8)         # the block: up to its jmp (not the hlt: the `until` probe)


def _engine(code: bytes, others: bool = True) -> Uc:
    """An engine holding `code`; with `others`, a second code hook far from it,
    as in the VM (with exactly one code hook Unicorn 2.1.4 inlines a direct
    call to it instead of the list walk: see the last test)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, RAM)
    uc.mem_write(CODE, code)
    if others:
        uc.hook_add(UC_HOOK_CODE, lambda *a: None, None, FAR, FAR)
    return uc


def _flags(uc: Uc, code: bytes, eflags: int = 0x2) -> int:
    """Run the code once from the top (the memory operand equal to EDX:EAX, so
    ZF comes out set); pushfd's value."""
    uc.mem_write(DATA, struct.pack("<II", 5, 1))
    uc.reg_write(X.UC_X86_REG_ESP, 0x9000)
    uc.reg_write(X.UC_X86_REG_EFLAGS, eflags)
    uc.emu_start(CODE, CODE + len(code) - 1)
    return uc.reg_read(X.UC_X86_REG_EBP)


def _count(addr: int, n: int) -> int:
    return int.from_bytes(_peek(addr, n), "little")


def _good(flags: int) -> bool:
    return bool(flags & 0x40) and flags >> 22 == 0


def test_the_sync_stays_in_a_translated_block_after_the_hook_is_deleted():
    uc = _engine(MID)
    calls = []
    h = uc.hook_add(UC_HOOK_CODE, lambda *a: calls.append(1), None, SITE, SITE)
    assert _good(_flags(uc, MID))
    uc.hook_del(h)
    assert _good(_flags(uc, MID))           # the same translated block: still synced
    assert len(calls) == 1                  # and the deleted hook is not called


def test_the_emitted_walk_calls_a_hook_added_after_the_translation():
    """helper_uc_tracecode stays in the block: it walks the list at run time and
    finds a code hook added at the site later (no retranslation)."""
    uc = _engine(MID)
    h = uc.hook_add(UC_HOOK_CODE, lambda *a: None, None, SITE, SITE)
    _flags(uc, MID)
    uc.hook_del(h)
    seen = []
    uc.hook_add(UC_HOOK_CODE, lambda uc_, a, s, d: seen.append(a), None, SITE, SITE)
    _flags(uc, MID)
    assert seen == [SITE]


def test_a_block_translated_again_after_removal_has_no_sync():
    uc = _engine(MID)
    h = uc.hook_add(UC_HOOK_CODE, lambda *a: None, None, SITE, SITE)
    assert _good(_flags(uc, MID))
    uc.hook_del(h)
    assert _good(_flags(uc, MID))
    uc.ctl_remove_cache(SITE, SITE + 1)
    assert not _good(_flags(uc, MID))


def test_a_block_for_other_cpu_flags_has_no_sync_and_moves_no_generation():
    """Same address, same bytes, IOPL 3: tb_find finds no block for these flags
    and translates one, with no invalidation or flush."""
    uc = _engine(MID)
    h = uc.hook_add(UC_HOOK_CODE, lambda *a: None, None, SITE, SITE)
    assert _good(_flags(uc, MID))
    uc.hook_del(h)
    inv, fl = addresses(uc)

    def moved(eflags: int) -> tuple[bool, int, int]:
        before = (_count(inv, 8), _count(fl, 4))
        good = _good(_flags(uc, MID, eflags))
        return good, _count(inv, 8) - before[0], _count(fl, 4) - before[1]

    plain = moved(0x2)          # a run moves the invalidations by its `until` probe's only
    assert plain[0] and plain[2] == 0
    assert moved(0x3002) == (False, plain[1], 0)
    assert _good(_flags(uc, MID))           # the first block is still there, synced


def test_a_site_at_a_block_start_needs_no_sync():
    """cmpxchg8b first in its block (a jump's target): the lazy flags are in
    the CPU state already, the flags come out right with no hook."""
    code = _asm("""
        mov esi, 0x8000
        mov edi, 0x12345678
        mov eax, 5
        mov edx, 1
        add edi, edi
        jmp next
    next:
        cmpxchg8b qword ptr [esi]
        pushfd
        pop ebp
        jmp done
    nop; nop; nop; nop; nop; nop; nop; nop
    done:
        hlt
    """)
    assert _good(_flags(_engine(code), code))


def test_deleting_a_hook_invalidates_the_blocks_that_start_at_it():
    """uc_hook_del removes the blocks translated while the hook covered their
    first address (Unicorn's hooked_regions): the generation moves."""
    code = _asm("""
        mov esi, 0x8000
        mov eax, 5
        mov edx, 1
        jmp next
    next:
        cmpxchg8b qword ptr [esi]
        pushfd
        pop ebp
        jmp done
    nop; nop; nop; nop; nop; nop; nop; nop
    done:
        hlt
    """)
    uc = _engine(code)
    start = CODE + code.index(b"\x0f\xc7")
    h = uc.hook_add(UC_HOOK_CODE, lambda *a: None, None, start, start)
    _flags(uc, code)
    inv, _ = addresses(uc)
    before = _count(inv, 8)
    uc.hook_del(h)
    assert _count(inv, 8) == before + 1
    # a site inside a block: its block is not removed
    uc = _engine(MID)
    h = uc.hook_add(UC_HOOK_CODE, lambda *a: None, None, SITE, SITE)
    _flags(uc, MID)
    inv, _ = addresses(uc)
    before = _count(inv, 8)
    uc.hook_del(h)
    assert _count(inv, 8) == before


IO = _asm("""
    mov dx, 0x80
    in al, dx
    inc ebx
    inc ebx
    jmp done
nop; nop; nop; nop; nop; nop; nop; nop
done:
    hlt
""")
AFTER_IN = CODE + IO.index(b"\xec") + 1


def _in_stop(uc: Uc) -> int:
    """EIP where emulation stopped after the in's hook asked for a stop."""
    uc.reg_write(X.UC_X86_REG_EBX, 0)
    uc.emu_start(CODE, CODE + len(IO) - 1)
    return uc.reg_read(X.UC_X86_REG_EIP)


def test_the_stop_check_after_an_in_stays_after_the_hook_is_deleted():
    uc = _engine(IO)
    uc.hook_add(UC_HOOK_INSN, lambda uc_, port, size, d: (uc_.emu_stop(), 0)[1], None, 1, 0,
                X.UC_X86_INS_IN)
    h = uc.hook_add(UC_HOOK_CODE, lambda *a: None, None, AFTER_IN, AFTER_IN)
    assert _in_stop(uc) == AFTER_IN
    uc.hook_del(h)
    assert _in_stop(uc) == AFTER_IN         # the translated check still stops there
    uc.ctl_remove_cache(AFTER_IN, AFTER_IN + 1)
    assert _in_stop(uc) != AFTER_IN         # translated again: the block runs on


def test_edge_generated_sees_every_translation_after_the_first_block():
    uc = _engine(MID)
    made = []
    uc.hook_add(UC_HOOK_EDGE_GENERATED, lambda uc_, cur, prev, d: made.append((cur.pc, cur.size)))
    _flags(uc, MID)
    # the engine's first block: no last_tb yet; then the `until` address's own
    # empty block (translated on every run: the probe removes it)
    assert made == [(CODE + len(MID) - 1, 0)]
    made.clear()
    _flags(uc, MID, eflags=0x3002)          # a block for other flags
    assert made[0] == (CODE, MID_TB)
    made.clear()
    uc.ctl_remove_cache(SITE, SITE + 1)
    _flags(uc, MID)                         # translated again after removal
    assert made[0] == (CODE, MID_TB)
    made.clear()
    _flags(uc, MID)                         # cached: only the `until` block again
    assert made == [(CODE + len(MID) - 1, 0)]


def test_with_one_code_hook_the_call_is_inlined_and_outlives_its_deletion():
    """hooks_count == 1: the translator emits a direct call to that hook's
    callback (Unicorn 2.1.4 gen_uc_tracecode), no list walk; deleting the hook
    leaves the call in the block, so the deleted callback keeps running there.
    A design deleting native hooks must keep their callback and data alive for
    the engine's life (the clock's no-op callback is static)."""
    uc = _engine(MID, others=False)
    calls = []
    h = uc.hook_add(UC_HOOK_CODE, lambda *a: calls.append(a[1]), None, SITE, SITE)
    _flags(uc, MID)
    keep = uc._callbacks[h]     # the binding drops its C thunk on deletion: the block would call freed memory
    uc.hook_del(h)
    _flags(uc, MID)
    assert calls == [SITE, SITE]
    del keep
