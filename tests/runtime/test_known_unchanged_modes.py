"""Blocks known unchanged (runtime/_clock.c) in trap and bt, not only under
emulate's fast stores (runtime/clock.py watch_generation): the skip needs only
that every page holding translated code keeps TLB_NOTDIRTY, which fast stores
(on in every mode) clear only on pages that never ran code.  The same demo with the generation unwatched (every block
compared, as before) must give the same clock counts, registers and serial
output, and the skip must actually happen."""
from __future__ import annotations

import pytest

from bt import api

# Demos with self-modifying code, page tables and patches (bt) among them.
DEMOS = ("smc", "paging", "hotflags", "timer")
# The skip's own counters, and the fast-stores sweep's unmark count: with fast
# stores in every mode, under paging it moves with the skip in trap and bt as
# it does under emulate (the paging demo: emulate 19 / 16, trap 16 / 13, bt
# 16 / 12 watched / not; not investigated -- a statistic of which TLB entries
# the sweep meets, not of the guest).  `code_frames_reused` counts the slow
# path's code checks that reused the block's translation: the quick path
# (which needs the skip) makes fewer of them.
SKIP_COUNTERS = ("unchanged_blocks", "walks_remembered", "front_misses", "quick_hits",
                 "store_entries_unmarked", "code_frames_reused")


def _run(demo: str, mode: str, watch: bool):
    vm = api.make_vm(f"demo:{demo}", mode, mem_mib=4, max_instructions=2_000_000)
    if not watch:
        vm.clock.c.watch_generation(0, 0)      # NULL counters: every block is compared
    vm.run()
    regs = vm.uc.reg_read
    from unicorn import x86_const as X
    seen = {"stop": (vm.stop.outcome, vm.stop.status, vm.stop.message),
            "regs": [regs(r) for r in (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
                                       X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_ESP, X.UC_X86_REG_EIP)],
            "serial": bytes(vm.serial)}
    stats = vm.clock.stats()
    return seen, {k: v for k, v in stats.items() if k not in SKIP_COUNTERS}, stats["unchanged_blocks"]


@pytest.mark.parametrize("mode", ["trap", "bt"])
@pytest.mark.parametrize("demo", DEMOS)
def test_blocks_known_unchanged_under_trap_and_bt_change_no_count(demo, mode):
    seen_on, counts_on, unchanged = _run(demo, mode, True)
    seen_off, counts_off, unchanged_off = _run(demo, mode, False)
    assert seen_on == seen_off
    assert counts_on == counts_off
    assert unchanged_off == 0 and unchanged > counts_on["blocks"] // 2
