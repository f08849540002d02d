"""What a memory hook costs guest loads and stores in Unicorn 2.1.4, and where
that cost is decided -- the facts behind docs/benchmarks.md "Memory hooks and
Unicorn's slow path" (issue 19: bt at most 1.5x QEMU).

Read in Unicorn's source (qemu/tcg/i386/tcg-target.inc.c tcg_out_tlb_load,
qemu/include/tcg/tcg.h tcg_uc_has_hookmem): when a block is *translated*
while any UC_HOOK_MEM_READ, UC_HOOK_MEM_READ_AFTER or UC_HOOK_MEM_WRITE hook
exists, whatever its range, every load and store of the block is emitted as
an unconditional jump to the helper (load_helper / store_helper) instead of
the inline TLB compare; the hook's range is checked only inside the helper
(HOOK_BOUND_CHECK), per access.  TLB entries carry no hook flag
(tlb_set_page_with_attrs never looks at hooks).  The protection hooks
(READ_PROT / WRITE_PROT / FETCH_PROT) and the UNMAPPED ones are not in that
test: they are asked only on accesses that reach a helper anyway.

The timings below are ratios of the best of five interleaved rounds (the
machine is shared); measured 2026-11-30 on the project's machine, two
sessions: loads with a read or write hook on a page the loop never touches
4.6-6.9x the bare engine, a read hook covering the loaded page 11.5-14.9x
(Unicorn restores the precise CPU state before calling a hook whose range an
access hits); stores 1.0x with a write hook elsewhere (every RAM store is on
the slow path already: TLB_NOTDIRTY, tests/runtime/test_store_facts.py),
1.6x with one covering the stored page; protection hooks elsewhere 1.0-1.2x.  The bounds
asserted are loose on purpose."""
from __future__ import annotations

import time

from unicorn import (UC_HOOK_MEM_FETCH_PROT, UC_HOOK_MEM_READ, UC_HOOK_MEM_READ_PROT, UC_HOOK_MEM_WRITE,
                     UC_HOOK_MEM_WRITE_PROT)

from unicorn.unicorn_py3.unicorn import uclib

from conftest import assemble
from runtime import _isolation
from runtime.fastuc import hook_add
from runtime.quirks import scratch_engine

CODE, A, B = 0x1000, 0x4000, 0x6000      # the loop's data page A; page B is never touched
NOOP = _isolation.keeper()                # an empty native memory-hook callback
PROT = UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT | UC_HOOK_MEM_FETCH_PROT
# The run ends at the `hlt` behind a `jmp` and a never-run `nop`: Unicorn
# invalidates the block holding `until - 1` at the end of every emu_start
# (the `until` probe of the Unicorn notes), which must not be the loop's.
TAIL = "jmp done\nnop\ndone: hlt"
LOADS = assemble(f"mov ecx, 2000000\nl: mov eax, [{A:#x}]\nadd ebx, [{A + 4:#x}]\nadd edx, [{A + 8:#x}]\n"
                 "dec ecx\njnz l\n" + TAIL, CODE)
STORES = assemble(f"mov ecx, 1000000\nl: mov [{A:#x}], ecx\nmov [{A + 4:#x}], ecx\nmov [{A + 8:#x}], ecx\n"
                  "dec ecx\njnz l\n" + TAIL, CODE)


def _on(kind, page):
    return lambda uc: hook_add(uc, kind, NOOP, None, page, page + 0xFFF)


def _one_round(uc, code: bytes) -> None:
    """Translate and run the loop's block once (ECX = 1), without `count`: switching
    between counted and uncounted runs flushes the translation cache (Unicorn's
    uc_emu_start, the count hook)."""
    from unicorn import x86_const as X
    uc.reg_write(X.UC_X86_REG_ECX, 1)
    uc.emu_start(CODE + 5, CODE + len(code) - 1)        # from the loop (after `mov ecx, n`) to the hlt


def _seconds(code: bytes, setup, between=None) -> float:
    """CPU time of one run of `code` after `setup(uc)`; with `between`, the loop
    is first translated (a short run), then `between(uc)` runs, then the timed run."""
    uc = scratch_engine(0x10000, 0x8000)
    uc.mem_write(CODE, code)
    setup(uc)
    if between is not None:
        _one_round(uc, code)
        between(uc)
    t0 = time.process_time()
    uc.emu_start(CODE, CODE + len(code) - 1)
    return time.process_time() - t0


def _ratios(code: bytes, setups: dict, rounds: int = 5) -> dict:
    """Best-of-`rounds` CPU time of each setup over the bare engine's, rounds interleaved."""
    best = {name: float("inf") for name in ("bare", *setups)}
    for _ in range(rounds):
        best["bare"] = min(best["bare"], _seconds(code, lambda uc: None))
        for name, (setup, between) in setups.items():
            best[name] = min(best[name], _seconds(code, setup, between))
    return {name: t / best["bare"] for name, t in best.items()}


def test_fact_a_memory_hook_anywhere_sends_every_load_to_the_slow_path():
    """A bounded hook does not confine the cost to its range: a read or a write
    hook on page B makes every load from page A take load_helper.  A hook
    covering A costs more again (a state restore and a call per access)."""
    r = _ratios(LOADS, {"write_B": (_on(UC_HOOK_MEM_WRITE, B), None),
                        "read_B": (_on(UC_HOOK_MEM_READ, B), None),
                        "read_A": (_on(UC_HOOK_MEM_READ, A), None)})
    assert r["write_B"] > 2 and r["read_B"] > 2, r
    assert r["read_A"] > 1.3 * max(r["write_B"], r["read_B"]), r


def test_fact_protection_hooks_leave_loads_on_the_inline_path():
    """READ_PROT/WRITE_PROT/FETCH_PROT hooks are not part of tcg_uc_has_hookmem:
    loads stay inline (the isolation guard's own hook costs nothing by itself;
    runtime/isolation.py's empty write hook is what sends trap's loads to the
    helper)."""
    r = _ratios(LOADS, {"prot_B": (_on(PROT, B), None), "write_B": (_on(UC_HOOK_MEM_WRITE, B), None)})
    assert r["prot_B"] < 1.6 and r["write_B"] > 2 * r["prot_B"], r


def test_fact_stores_are_on_the_slow_path_with_or_without_a_hook_elsewhere():
    """Every RAM store goes through store_helper anyway (TLB_NOTDIRTY), so a write
    hook on another page adds only its range check; one covering the stored page
    adds a state restore and a call per store."""
    r = _ratios(STORES, {"write_B": (_on(UC_HOOK_MEM_WRITE, B), None),
                         "write_A": (_on(UC_HOOK_MEM_WRITE, A), None)})
    assert r["write_B"] < 1.35, r
    assert r["write_A"] > 1.2 * r["write_B"], r


def test_fact_the_slow_path_is_in_the_translated_code_not_in_the_tlb():
    """A block translated while a hook existed keeps calling load_helper after the
    hook is gone (deleted, and the run that deleted it ended, so the list is
    empty); the same block retranslated (ctl_flush_tb) is inline again.  So no
    TLB trick makes hooked blocks fast: only translating without any read,
    read-after or write hook does."""
    handles = {}

    def add(uc):
        handles[id(uc)] = hook_add(uc, UC_HOOK_MEM_WRITE, NOOP, None, B, B + 0xFFF)

    def drop_hooks(flush):
        def between(uc):
            uclib.uc_hook_del(uc._uch, handles.pop(id(uc)))
            _one_round(uc, LOADS)           # the run that reaps the deleted hook
            if flush:
                uc.ctl_flush_tb()
        return between

    r = _ratios(LOADS, {"kept_code": (add, drop_hooks(False)), "retranslated": (add, drop_hooks(True))})
    assert r["kept_code"] > 2, r
    assert r["retranslated"] < 1.6 and r["kept_code"] > 2 * r["retranslated"], r


def test_fact_a_poisoned_tlb_entry_makes_every_protected_read_raise_its_event_again():
    """The first step of the design in docs/benchmarks.md ("A design for each
    hook"): without any write hook, a protected read the READ_PROT hook allowed
    is cached (tests/runtime/test_isolation_facts.py) -- unless the hook makes
    the page's TLB read entry invalid (`addr_read`, the entry's first field,
    through runtime/softtlb.py's layout): the allowed read still completes
    (Unicorn reads through the entry it already holds), and the next read of
    the page misses, is refilled in load_helper and raises the event again.
    So the isolation keeper's write hook could go without a cached read ever
    passing unseen."""
    import ctypes
    from unicorn import UC_PROT_NONE
    from unicorn import x86_const as X
    from runtime import softtlb
    from runtime.quirks import Quirks
    lay = softtlb.layout()
    assert lay.write == 8                   # addr_read comes first (QEMU's CPUTLBEntry)
    area = 0x200000
    code = assemble(f"mov eax, [{area:#x}]\nmov ebx, [{area + 4:#x}]\nmov ecx, [{area + 8:#x}]\n" + TAIL, CODE)

    def events(poison: bool):
        uc = scratch_engine(0x100000, host_backed=True)
        env = Quirks(uc).env
        assert env is not None
        uc.mem_map(area, 0x1000, UC_PROT_NONE)
        uc.mem_write(area, bytes(range(12)))
        uc.mem_write(CODE, code)
        seen = []

        def allow(u, access, addr, size, value, data):
            seen.append(addr)
            if poison:
                for *_, p, _a, at in softtlb.entries(env, lay):
                    if p & ~0xFFF == area:
                        ctypes.c_uint64.from_address(at - lay.write).value = 2 ** 64 - 1
            return True
        uc.hook_add(UC_HOOK_MEM_READ_PROT, allow, None, area, area + 0xFFF)
        uc.emu_start(CODE, CODE + len(code) - 1)
        assert uc.reg_read(X.UC_X86_REG_ECX) == int.from_bytes(bytes(range(8, 12)), "little")
        return seen

    assert events(False) == [area]
    assert events(True) == [area, area + 4, area + 8]
