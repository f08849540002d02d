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
    CounterDecl("gdt_write_exits", "guest writes to write-monitored pages holding its GDT"),
    CounterDecl("scan_exits", "first executions of unscanned code (bt: lazy CSAM)"),
    CounterDecl("stub_exits", "exits from patch stubs into the VMM, by kind (bt)", keyed=True),
    CounterDecl("guards_installed", "int3 guards placed on unresolved indirect branches (bt)"),
    CounterDecl("slices", "emulation slices (emu_start calls)"),
)

# Kept by the I/O bus (runtime/devices/bus.py) and merged into the report.
BUS_COUNTERS: tuple[CounterDecl, ...] = (
    CounterDecl("io_by_port", "I/O accesses by port", keyed=True),
    CounterDecl("unhandled_port_reads", "reads of ports no device owns (answered all ones)", keyed=True),
    CounterDecl("unhandled_port_writes", "writes to ports no device owns (dropped)", keyed=True),
)

_BY_NAME = {d.name: d for d in DECLARATIONS + BUS_COUNTERS}


class Counters:
    """The run's counters.  Attribute-free on purpose: `c.add(name, key)`."""

    def __init__(self):
        self._plain: dict[str, int] = {d.name: 0 for d in DECLARATIONS if not d.keyed}
        self._keyed: dict[str, Counter] = {d.name: Counter() for d in DECLARATIONS if d.keyed}

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


def _key(k) -> str:
    return hex(k) if isinstance(k, int) else str(k)


def _sort_key(k):
    return (0, k, "") if isinstance(k, int) else (1, 0, str(k))


def describe(name: str) -> str:
    return _BY_NAME[name].meaning
