"""Two per-event costs bt paid under paging, gone without changing what the
guest sees (docs/benchmarks.md, "bt's kernel phase: where its time goes"):

* a new stub under paging removed every translated block (`ctl_flush_tb`),
  because the walk-based check in runtime/bt.py `_flush` never held for the
  hypervisor area; now its own blocks go (`_area_mapped`), and a freed stub's
  space reused by a new stub must still never run the old stub's translation;
* the clock's code check walked the guest's page tables a second time for
  every block (runtime/_clock.c `block_frame`): it now takes the translation
  the block hook made for the block's first page."""
import struct

import pytest

from bt.hyper_layout import HYPER_SIZE
from conftest import EXIT, raw_guest, run

PD, PT = 0x30000, 0x31000
REGS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "esp")


def _tables():
    """Identity map of 0-4 MiB in one two-level directory."""
    pt = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    return [(PT, pt), (PD, struct.pack("<I", PT | 3))]


PAGING_ON = f"""
    mov esp, 0x90000
    mov eax, {PD:#x}
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
"""


def _serial_eax() -> str:
    return "".join("mov dx, 0x3f8\nout dx, al\nshr eax, 8\n" for _ in range(4))


def rewrite_covered(rounds: int) -> str:
    """tests/runtime/test_patch_churn.py's guest with paging on: the pushfd's
    patch covers the rewritten immediate, so every round builds a new stub
    (and, with a small bound on kept stubs, into space a freed stub held)."""
    return (PAGING_ON + f"mov ecx, {rounds}\n"
            "l: pushfd\nmov eax, 0x12345678\npopfd\ninc dword ptr [l + 2]\n"
            "dec ecx\njnz l\n" + _serial_eax() + EXIT + "hlt\n")


def _count_flushes(monkeypatch):
    from unicorn import Uc
    calls = []
    real = Uc.ctl_flush_tb
    monkeypatch.setattr(Uc, "ctl_flush_tb", lambda self: (calls.append(1), real(self))[1])
    return calls


def _both(src: str):
    img = raw_guest(src, _tables())
    _, emu = run(img, "emulate")
    vm, bt = run(img, "bt")
    assert emu.exit_status == bt.exit_status == 0, bt.message
    assert bt.serial == emu.serial
    assert bt.retired == emu.retired
    assert {r: bt.regs[r] for r in REGS} == {r: emu.regs[r] for r in REGS}
    return vm, bt


def test_new_stubs_under_paging_flush_nothing_and_reused_space_runs_the_new_stub(monkeypatch):
    import patcher.patches
    monkeypatch.setattr(patcher.patches, "RETIRED_STUB_BYTES", 4096)
    flushes = _count_flushes(monkeypatch)
    vm, bt = _both(rewrite_covered(400))
    assert bt.serial == (0x12345678 + 399).to_bytes(4, "little")
    p = bt.extra["patches"]
    assert p["installed"]["pushfd"] >= 400          # a stub built under paging every round
    assert p["stubs_freed"] >= 250                  # ... many of them where a freed stub was
    # Without `_area_mapped` each of those stubs flushed the whole cache.
    assert len(flushes) <= 2, len(flushes)


def test_the_targeted_removal_only_where_the_walk_meets_the_vmms_own_entry(monkeypatch):
    """The targeted removal needs a supervisor walk through the VMM's own
    entry (ring 3 and virtual-8086 mode are refused too); otherwise `_flush`
    keeps the whole-cache flush."""
    vm, _ = _both(rewrite_covered(3))
    mode = vm.mode
    lo = mode.cache.start
    assert mode._area_mapped(lo, lo + 16)           # the guest stopped at CPL 1, paging on
    fast = vm.fast
    from unicorn import x86_const as X
    cr3 = fast.reg_read(X.UC_X86_REG_CR3)
    slot = (cr3 & ~0xFFF) + (mode.hyper.base >> 22) * 4
    entry = vm.uc.mem_read(slot, 4)
    # the removal's walk meets only the VMM's entries, A preset: it stores nothing
    table = mode.hyper_mapping.our_entry() & ~0xFFF
    pte = vm.uc.mem_read(table + ((lo >> 12) & 0x3FF) * 4, 4)
    flushes = _count_flushes(monkeypatch)
    mode._flush(lo, lo + 16)
    assert not flushes
    assert vm.uc.mem_read(slot, 4) == entry
    assert vm.uc.mem_read(table + ((lo >> 12) & 0x3FF) * 4, 4) == pte
    vm.uc.mem_write(slot, b"\0\0\0\0")
    try:
        assert not mode._area_mapped(lo, lo + 16)   # not the VMM's entry: no walk there
    finally:
        vm.uc.mem_write(slot, bytes(entry))
    assert not mode._area_mapped(0x1000, 0x1010)    # guest pages go the old way
    end = mode.hyper.base + HYPER_SIZE
    assert not mode._area_mapped(end - 8, end + 8)  # a range leaving the area too


@pytest.mark.parametrize("rounds", [50])
def test_the_code_check_reuses_the_blocks_translation_under_paging(rounds):
    """Every checked block start under paging is answered from the block's own
    translation; the guest's result is emulate's."""
    vm, bt = _both(rewrite_covered(rounds))
    stats = vm.clock.stats()
    checks = bt.extra["csam"]["block_checks"]
    assert checks > 100
    # each check of a block on one page (and each patch-jump weight) reuses it
    assert stats["code_frames_reused"] >= checks * 0.9, (stats["code_frames_reused"], checks)
