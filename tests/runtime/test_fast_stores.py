"""Fast stores under emulate (runtime/faststores.h): data pages unmarked, code
pages kept marked, and a page that was unmarked flushed out of the TLB when it
becomes code, so self-modifying code is seen exactly as before.
The engine facts are in tests/runtime/test_store_facts.py."""
from __future__ import annotations

from bt import api

# The page at 0x200000 is first plain data (stored to often enough for the
# clock's sweep to unmark its TLB entry), then receives code and runs it (the
# clock must flush the TLB here, or the next step would run a stale
# translation), then the code is rewritten twice, once after another burst of
# data stores to the same page (a code page stays marked).
GUEST = """
    mov esp, 0x90000
    mov ecx, 20000
l1: mov dword ptr [0x200800], ecx
    dec ecx
    jnz l1
    lea esi, [tmpl]
    mov edi, 0x200000
    mov ecx, 6
    cld
    rep movsb
    mov esi, 0x200000
    call esi
    mov ebx, eax
    mov dword ptr [0x200001], 5
    call esi
    mov edx, eax
    mov ecx, 20000
l2: mov dword ptr [0x200800], ecx
    dec ecx
    jnz l2
    mov dword ptr [0x200001], 9
    call esi
    mov edi, eax
    hlt
tmpl:
    mov eax, 1
    ret
"""


def run(mode: str = "emulate"):
    src = "start:\n" + GUEST
    return api.run(api.code_image(src), mode, max_instructions=2_000_000)


def test_code_written_into_an_unmarked_data_page_and_rewritten_runs_as_written():
    res = run()
    assert (res.regs["ebx"], res.regs["edx"], res.regs["edi"]) == (1, 5, 9)
    assert res.vm.fast_stores_problem == ""
    st = res.vm.clock.stats()
    assert st["store_entries_unmarked"] >= 1      # the data page's entry was unmarked ...
    assert st["store_tlb_flushes"] >= 1           # ... and flushed when it became code
    assert st["store_code_pages"] >= 2


def test_the_same_guest_under_bt_agrees():
    """bt has memory hooks and no fast stores: the reference for the same program."""
    a, b = run(), run("bt")
    assert (a.regs, a.retired, a.serial) == (b.regs, b.retired, b.serial)
    assert b.vm.clock.stats()["store_entries_unmarked"] == 0
    assert b.vm.fast_stores_problem == "not under emulate"


def test_without_the_tlb_the_run_goes_on_without_fast_stores(monkeypatch):
    """A Unicorn whose TLB calibration cannot find: the same results, slower."""
    from runtime import softtlb

    def broken():
        raise softtlb.TLBError("no descriptor found")
    from runtime.quirks import once_per_process
    monkeypatch.setattr(softtlb, "layout", once_per_process(broken, softtlb.TLBError))
    res = run()
    assert res.vm.fast_stores_problem == "no descriptor found"
    assert res.vm.clock.stats()["store_entries_unmarked"] == 0
    assert (res.regs["ebx"], res.regs["edx"], res.regs["edi"]) == (1, 5, 9)
