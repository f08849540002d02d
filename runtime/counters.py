"""Named exit counters, declared once.

Every counter the runtime keeps is declared here with its meaning; the report
and the `bt-run` summary read this table, so a counter cannot be reported under
two names or exist without a description (PATM's STAM counters are the model).
Keyed counters (by port, by vector, by mnemonic, by site) are dicts.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class CounterDecl:
    name: str
    meaning: str
    keyed: bool = False
    gauge: bool = False      # a figure read at report time, not counted


DECLARATIONS: tuple[CounterDecl, ...] = (
    CounterDecl("exits", "every transfer of control from guest code into the VMM's Python code"),
    CounterDecl("io_exits", "I/O instructions handled by the VMM (device exits, not virtualization)"),
    CounterDecl("interrupts_injected", "hardware interrupts delivered through the guest IDT, by vector", keyed=True),
    CounterDecl("exceptions_delivered", "exceptions and software interrupts delivered to the guest IDT, by vector", keyed=True),
    CounterDecl("faults_emulated", "faults caused by deprivileging, emulated by the VMM, by mnemonic", keyed=True),
    CounterDecl("faults_reflected", "faults the guest would take on real hardware, reflected into its IDT, by vector", keyed=True),
    CounterDecl("exit_sites", "exits by guest address (hex), for the top-sites table", keyed=True),
    CounterDecl("cpuid_exits", "cpuid instructions answered from the machine model"),
    CounterDecl("halts", "hlt instructions that idled the virtual CPU"),
    CounterDecl("scan_exits", "first executions of unscanned code (bt: lazy CSAM)"),
    CounterDecl("stub_exits", "exits from patch stubs into the VMM, by kind (bt)", keyed=True),
    CounterDecl("guards_installed", "int3 guards placed on unresolved indirect branches (bt)"),
    CounterDecl("slices", "emulation slices (emu_start calls)"),
    CounterDecl("io_native", "port accesses answered natively from what devices publish (runtime/iofast.py)"),
)

# Kept by the I/O bus (runtime/devices/bus.py) and merged into the report.
BUS_COUNTERS: tuple[CounterDecl, ...] = (
    CounterDecl("io_by_port", "I/O accesses by port", keyed=True),
    CounterDecl("unhandled_port_reads", "reads of ports no device owns (answered all ones)", keyed=True),
    CounterDecl("unhandled_port_writes", "writes to ports no device owns (dropped)", keyed=True),
)

# Kept by the patcher (patcher/patches.py), reported as `extra.patches` in bt mode.
PATCH_STATS: tuple[CounterDecl, ...] = (
    CounterDecl("installed", "patches installed, by catalog row (jump and int3 patches)", keyed=True),
    CounterDecl("refused", "jump patches refused, by reason (patcher.policy.Refusal)", keyed=True),
    CounterDecl("removed", "patches removed because the guest wrote to their page"),
    CounterDecl("superseded", "patches removed because a new jump patch's stub translates them"),
    CounterDecl("int3_fallbacks", "int3 patches installed (their jump was refused)"),
    CounterDecl("enabled", "patches installed at the end of the run", gauge=True),
    CounterDecl("stub_cache_bytes", "bytes of the stub cache allocated so far (its high-water mark; "
                "freed blocks are reused first)", gauge=True),
    CounterDecl("stub_cache_free_bytes", "of those, freed blocks awaiting reuse", gauge=True),
    CounterDecl("retired_stubs", "stubs of removed jump patches kept for reuse (patcher/patches.py)",
                gauge=True),
    CounterDecl("stub_reuses", "jump patches installed with the kept stub of an identical removed one"),
    CounterDecl("stubs_freed", "kept stubs freed (beyond the bound, or replaced)"),
    CounterDecl("iopl_changes", "changes of the guest's IOPL the flag stubs were rewritten for "
                "(patcher/patches.py set_iopl)"),
    CounterDecl("iopl_rewrites", "stubs whose IOPL-dependent bytes were rewritten (installed ones at "
                "a change, kept ones when reused)"),
    CounterDecl("ring3_tests", "1 once pushf(d) stubs test for CPL 3 (the guest ran ring 3 without "
                "paging and with a real IOPL other than 1; patcher/patches.py set_ring3_tests)"),
)

# Kept by bt mode (runtime/bt.py, runtime/csam.py), reported as `extra.csam`.
CSAM_STATS: tuple[CounterDecl, ...] = (
    CounterDecl("scans", "scanner runs (lazy scans, delivery targets, guard targets)"),
    CounterDecl("pages_scanned", "pages that became code pages through a scan"),
    CounterDecl("pages_rescanned", "of those, pages scanned again after an invalidation"),
    CounterDecl("faults_before_patching", "first traps of patchable sites (fault-driven patching)"),
    CounterDecl("faults_after_patching", "traps at sites patching already handled "
                "(int3 patches, refused fault-driven jumps)"),
    CounterDecl("stub_exits", "exits from patch stubs (emulate and window exits)"),
    CounterDecl("int3_exits", "executions of int3 patches"),
    CounterDecl("guard_exits", "executions of int3 guards on indirect branches"),
    CounterDecl("code_page_writes", "logged ranges of guest stores into scanned bytes (native write "
                "hook; a store that continues the one before extends its range)"),
    CounterDecl("smc_invalidations", "code pages invalidated because the guest wrote scanned bytes "
                "(at one drain of the write log; runtime/smc.py)"),
    CounterDecl("smc_blocks_dropped", "blocks those invalidations dropped: the written ones and what "
                "depends on them (the whole page only when the write log overflowed)"),
    CounterDecl("unscannable_starts", "refused block starts no scan could make known (run once as they are)"),
    CounterDecl("patch_interior_redirects", "block starts inside a jump patch sent to the stub's copy"),
    CounterDecl("patch_interior_replans", "block starts inside a jump patch that removed it and re-planned"),
    CounterDecl("irq_scratch_restores", "interrupts taken between two templates sharing a scratch "
                "register, whose guest value went back into it first (runtime/bt.py may_inject)"),
    CounterDecl("hidden_reads", "guest loads that covered patch bytes and saw the guest's own bytes "
                "(native read hooks, runtime/_clock.c)", gauge=True),
    CounterDecl("relocations", "moves of the hypervisor area"),
    CounterDecl("view_moves", "linear pages whose scan was dropped because their physical page is "
                "run through another linear address, or they map other memory now (paging)"),
    CounterDecl("accessed_bits_restored", "block-cache removals under paging whose walk set accessed bits "
                "the VMM put back (runtime/bt.py _remove_cache_unseen)"),
    CounterDecl("view_reuses", "alias returns whose parked scan served again (no rescan; paging)"),
    CounterDecl("read_hidden_pages", "pages whose patch bytes the native read hooks hide from loads",
                gauge=True),
    CounterDecl("read_hook_spans", "times the read hooks' one range grew to cover a new hidden page"),
    CounterDecl("write_hook_spans", "times the code-write hook's one range grew to cover a new code page"),
    CounterDecl("guards", "int3 guards in place at the end of the run", gauge=True),
    CounterDecl("code_pages", "write-monitored code pages at the end of the run", gauge=True),
    CounterDecl("instructions_scanned", "instructions in the CFG at the end of the run", gauge=True),
    CounterDecl("block_checks", "guest-kernel block starts checked in C against the scanned starts",
                gauge=True),
    CounterDecl("unscanned_starts", "of those, refused: stopped and scanned before running", gauge=True),
    CounterDecl("code_writes", "guest stores into scanned bytes seen by the native write hook",
                gauge=True),
)

_BY_NAME = {d.name: d for d in DECLARATIONS + BUS_COUNTERS}


class Counters:
    """A set of declared counters (the run's, by default).  Attribute-free on
    purpose: `c.add(name, key)`; an undeclared name is a KeyError."""

    def __init__(self, declarations: tuple[CounterDecl, ...] = DECLARATIONS):
        self.declarations = declarations
        counted = [d for d in declarations if not d.gauge]
        self._plain: dict[str, int] = {d.name: 0 for d in counted if not d.keyed}
        self._keyed: dict[str, Counter] = {d.name: Counter() for d in counted if d.keyed}

    def add(self, name: str, key=None, n: int = 1) -> None:
        if key is None:
            self._plain[name] += n
        else:
            self._keyed[name][key] += n

    def get(self, name: str, key=None) -> int:
        if key is None and name in self._plain:
            return self._plain[name]
        if key is None:
            return sum(self._keyed[name].values())
        return self._keyed[name][key]

    def keyed(self, name: str) -> Counter:
        return self._keyed[name]

    def as_dict(self) -> dict:
        out: dict = dict(self._plain)
        for name, c in self._keyed.items():
            out[name] = {_key(k): v for k, v in sorted(c.items(), key=lambda kv: _sort_key(kv[0]))}
        return out

    def report(self, **gauges) -> dict:
        """The counters plus the declared gauges' values, in declaration order;
        a missing or undeclared gauge is an error, so a report carries exactly
        the declared figures."""
        want = {d.name for d in self.declarations if d.gauge}
        if set(gauges) != want:
            raise KeyError(f"gauges {sorted(set(gauges) ^ want)} not as declared")
        counted = self.as_dict()
        return {d.name: gauges[d.name] if d.gauge else counted[d.name] for d in self.declarations}


def _key(k) -> str:
    return hex(k) if isinstance(k, int) else str(k)


def _sort_key(k):
    return (0, k, "") if isinstance(k, int) else (1, 0, str(k))


def describe(name: str) -> str:
    return _BY_NAME[name].meaning
