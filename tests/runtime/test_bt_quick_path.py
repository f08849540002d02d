"""The clock's quick path under bt (runtime/_clock.c, "The quick path"): a
block known unchanged under paging off skips the entry, but CSAM's code check
is asked again at every hit (quick_checked) and blocks whose weight is not
their instruction count (a patch's jump, a stub) never get a quick copy.

Each guest runs under bt with the quick path on and off (`Clock.set_quick`):
everything must be the same -- registers, retired count, serial output,
every counter of the run (exits by site), and the code check's own counts --
and the same as under emulate where that applies."""
from __future__ import annotations

from bt import api

# A hot loop, then a store into code on the loop's page that CSAM scanned (the
# first walk follows the loop's fall-through) but that never ran: no
# translated block is hit, so Unicorn invalidates nothing and the loop's quick
# copies stay valid -- only the code check sees the page turn dirty, refuses
# the loop's next start and lets the VMM drain the write.
DIRTY = """
start:
    mov esp, 0x90000
    mov ecx, 3000
l1: add eax, ecx
    cmp ecx, 1500
    jne skip
    mov byte ptr [later + 1], 7
skip:
    dec ecx
    jnz l1
later:
    mov ebx, 1
    hlt
"""

# pushfd gets a jump patch; the loop's block at `l` then ends in that jump,
# which is no guest instruction (its stub counts the pushfd): its weight is
# one less than its instruction count, and a quick copy would count it.
PATCHED = """
start:
    mov esp, 0x90000
    mov ecx, 3000
l:  add esi, 3
    add edi, 5
    pushfd
    pop eax
    add edx, eax
    xor ebp, esi
    dec ecx
    jnz l
    hlt
"""


def run(src: str, mode: str = "bt", quick: bool = True):
    vm = api.make_vm(api.code_image(src), mode, max_instructions=1_000_000)
    vm.clock.c.set_quick(quick)
    res = vm.run()
    codes = vm.clock.c.code_stats() if mode == "bt" else {}
    return res, codes, vm.clock.stats()


def same(a, b):
    (ra, ca, sa), (rb, cb, sb) = a, b
    assert (ra.regs, ra.retired, ra.serial, ra.reason) == (rb.regs, rb.retired, rb.serial, rb.reason)
    assert ra.counters == rb.counters
    assert ca == cb
    # the quick path's point: fewer lookups, and no slow-path code check that
    # could reuse the block's translation (code_frames_reused counts those)
    skip = {"front_misses", "quick_hits", "code_frames_reused"}
    assert {k: v for k, v in sa.items() if k not in skip} == {k: v for k, v in sb.items() if k not in skip}


def test_a_store_into_scanned_code_refuses_the_next_quick_start():
    on, off = run(DIRTY), run(DIRTY, quick=False)
    same(on, off)
    res, codes, stats = on
    assert res.regs["ebx"] == 7                     # the guest's store took effect
    assert codes["block_checks"] > 3000             # every loop block start was checked
    assert codes["unscanned_starts"] >= 2           # the first scan, and the dirty page
    assert stats["quick_hits"] > 2000 and off[2]["quick_hits"] == 0   # the quick path did run
    em = run(DIRTY, "emulate")[0]
    assert (em.regs, em.retired) == (res.regs, res.retired)


def test_a_block_that_is_a_patch_jump_keeps_its_weight():
    on, off = run(PATCHED), run(PATCHED, quick=False)
    same(on, off)
    res = on[0]
    assert on[2]["quick_hits"] > 2000
    assert res.extra["patches"]["installed"] == {"pushfd": 1}
    em = run(PATCHED, "emulate")[0]
    assert (em.regs["ecx"], em.regs["edx"] != 0, em.retired) == (res.regs["ecx"], True, res.retired)
