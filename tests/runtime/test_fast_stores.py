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


def test_the_same_guest_under_trap_and_bt_agrees_with_fast_stores_on():
    """Fast stores in every mode: trap's and bt's memory hooks still see every
    store (Unicorn calls them before it looks at TLB_NOTDIRTY:
    tests/runtime/test_store_facts.py), so the same program gives the same
    result, with the data page unmarked and flushed when it became code."""
    a = run()
    for mode in ("trap", "bt"):
        b = run(mode)
        assert (a.regs, a.retired, a.serial) == (b.regs, b.retired, b.serial), mode
        assert b.vm.fast_stores_problem == ""
        st = b.vm.clock.stats()
        assert st["store_entries_unmarked"] >= 1, mode
        assert st["store_tlb_flushes"] >= 1, mode


# CSAM scans `later` (on the page after the loop's, reached by the first walk
# through a direct jump) before it ever runs.  The loop then stores to that
# page often enough for the sweep to unmark its TLB entry, and finally
# rewrites `later`'s first instruction into `mov eax, cs`, which bt must
# emulate (natively it shows the CPL's RPL).  Only CSAM's code-write hook can
# see that store (no block of the page is translated, so Unicorn invalidates
# nothing): it must fire through the unmarked entry.
SCANNED_NOT_RUN = """
start:
    mov esp, 0x90000
    mov ecx, 20000
l1: mov dword ptr [data], ecx
    dec ecx
    jnz l1
    mov word ptr [later], 0xc88c
    jmp later
""" + "nop\n" * 4096 + """
data:
    .long 0
later:
    nop
    nop
    mov ebx, 1
    hlt
"""


def test_a_store_into_scanned_code_on_an_unmarked_page_is_still_seen_by_csam():
    em = api.run(api.code_image(SCANNED_NOT_RUN), "emulate", max_instructions=2_000_000)
    b = api.run(api.code_image(SCANNED_NOT_RUN), "bt", max_instructions=2_000_000)
    assert em.regs["eax"] == em.regs["cs"]                  # mov eax, cs ran
    assert (em.regs, em.retired) == (b.regs, b.retired)
    st = b.vm.clock.stats()
    assert st["store_entries_unmarked"] >= 1
    assert b.vm.clock.c.code_stats()["code_writes"] >= 1


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
