"""A cost model: estimated cycles on a real machine for a run, from counted events.

The runtime counts events (instructions, exits by kind); this module prices them.
Every per-event cost is a documented, overridable parameter whose default cites
its source (docs/benchmarks.md; a note outside the repository,
/work/shared/notes/reference-designs.md):

* Adams & Agesen, "A Comparison of Software and Hardware Techniques for x86
  Virtualization", ASPLOS 2006 (nanobenchmarks, cycles): divzero 889 native /
  3,223 under the software VMM (a guest fault that goes through the VMM),
  in port 0x80: 214 under BT (device emulated in the VMM, no trap), 15,826 under
  first-generation VT-x.
* About 2,000 cycles per hardware VM exit on later hardware (Xeon X5570, KVM,
  EPT; SplitX paper).
* Pure emulators: Bochs runs 50-150 million guest instructions per second; at a
  3 GHz host that is 20-60 host cycles per guest instruction (default 30).

Modes priced:
    emulate  every instruction emulated (emulate_cycles_per_insn), devices in software
    trap     native instructions; every exit a software-VMM trap (classic
             trap-and-emulate on hardware without virtualization support)
    bt       the same prices; the stub instructions bt adds are already in `retired`
    vtx      modelled from the *trap* run: native instructions, and a hardware VM exit
             only for what VT-x exits on: cpuid, I/O, CR accesses, hlt, MSR accesses
             (plus invd/xsetbv, which exit unconditionally) and external interrupts.
             cli/sti/pushf/popf/iret and descriptor-table instructions run natively
             in a VT-x guest at ring 0, so they cost nothing extra.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from bt.errors import BadInput
from bt.mode import Mode


@dataclass(frozen=True)
class CostParams:
    """Cycles per event.  One line per parameter, `name = default: what (source: ...)`,
    checked against the fields by `undocumented` (tests/bt/test_costmodel.py):

    native_cpi = 1.0: a guest instruction run natively (source: assumption, CPI ~1 on a modern core)
    emulate_cycles_per_insn = 30.0: a guest instruction in a pure emulator (source: Bochs 50-150 MIPS at ~3 GHz, 20-60 cycles)
    software_exit = 3223.0: one trap into a software VMM (source: Adams & Agesen, ASPLOS 2006, divzero under the software VMM)
    software_device = 214.0: a device access emulated in the VMM (source: Adams & Agesen, ASPLOS 2006, in port 0x80 under BT)
    emulate_device = 214.0: the same device model inside a pure emulator (source: assumed equal to software_device, Adams & Agesen)
    vmexit = 2000.0: one hardware VM exit (source: SplitX paper, ~2,000 cycles on Xeon X5570, KVM, EPT)
    """

    native_cpi: float = 1.0            # cycles per guest instruction run natively (assumption: CPI ~1)
    emulate_cycles_per_insn: float = 30.0   # Bochs 50-150 MIPS at ~3 GHz -> 20-60 (midpoint-ish)
    software_exit: float = 3223.0      # Adams & Agesen divzero under the software VMM
    software_device: float = 214.0     # Adams & Agesen in(0x80) under BT: device model cost
    emulate_device: float = 214.0      # the same device model inside a pure emulator
    vmexit: float = 2000.0             # ~2,000 cycles per VM exit (SplitX, X5570/KVM/EPT)

    def with_overrides(self, text: str | None) -> "CostParams":
        """Parse 'name=value,name=value' (the bt-bench --cost option)."""
        if not text:
            return self
        known = {f.name for f in fields(self)}
        values = asdict(self)
        for item in text.split(","):
            name, sep, val = item.partition("=")
            name = name.strip()
            if not sep or name not in known:
                raise BadInput(f"--cost: '{item}' is not NAME=CYCLES with NAME one of "
                               f"{', '.join(sorted(known))}")
            try:
                values[name] = float(val)
            except ValueError:
                raise BadInput(f"--cost: '{val}' is not a number (in '{item}')") from None
            if values[name] < 0:
                raise BadInput(f"--cost: {name} must not be negative")
        return CostParams(**values)


_PARAM_LINE = re.compile(r"^\s*(\w+) = ([0-9.]+): \S.*\(source: ([^)]*\S[^)]*)\)\s*$")


def documented_params(doc: str) -> dict[str, tuple[float, str]]:
    """name -> (documented default, source) for each parameter line of `doc`."""
    out = {}
    for line in doc.splitlines():
        m = _PARAM_LINE.match(line)
        if m:
            out[m.group(1)] = (float(m.group(2)), m.group(3).strip())
    return out


def undocumented(doc: str, params: "CostParams") -> list[str]:
    """Why `doc` fails to document `params`: a parameter with no line of its own
    citing a source, or whose line states another default; [] when it documents all."""
    docs = documented_params(doc)
    bad = []
    for f in fields(params):
        default = getattr(params, f.name)
        if f.name not in docs:
            bad.append(f"{f.name}: no 'name = default: what (source: ...)' line")
        elif docs[f.name][0] != default:
            bad.append(f"{f.name}: documented default {docs[f.name][0]} is not {default}")
    return bad


# What VT-x (with EPT, default controls) exits on, as the trap run counts it:
# faults_emulated keys are decoded mnemonics (runtime/emulation.py).  "mov" there is
# mov to/from CRn or DRn or mov ss; the CR share is what matters, and the demos'
# mov-ss sites are few, so all emulated "mov" count as CR accesses (documented).
VTX_EXIT_MNEMONICS = frozenset({"hlt", "mov", "rdmsr", "wrmsr", "invd", "xsetbv", "clts", "lmsw"})


def _total(counters: dict, name: str) -> int:
    v = counters.get(name, 0)
    return sum(v.values()) if isinstance(v, dict) else int(v)


def vtx_exits(trap_counters: dict) -> dict:
    """The events of a trap run that a VT-x guest would exit on, by kind."""
    faults = trap_counters.get("faults_emulated", {})
    out = {"cpuid": _total(trap_counters, "cpuid_exits"), "io": _total(trap_counters, "io_exits"),
           "interrupts": _total(trap_counters, "interrupts_injected")}
    for mn, n in sorted(faults.items()):
        if mn in VTX_EXIT_MNEMONICS:
            key = "cr" if mn in ("mov", "clts", "lmsw") else ("msr" if mn in ("rdmsr", "wrmsr") else mn)
            out[key] = out.get(key, 0) + n
    return out


def cycles(mode: str, retired: int, counters: dict, p: CostParams = CostParams()) -> float:
    """Modelled cycles of one run under `mode` (emulate/trap/bt), or "vtx" from a trap run."""
    io = _total(counters, "io_exits")
    if mode == Mode.EMULATE:
        return retired * p.emulate_cycles_per_insn + io * p.emulate_device
    if mode in (Mode.TRAP, Mode.BT):
        exits = _total(counters, "exits")
        return (retired * p.native_cpi + exits * p.software_exit + io * p.software_device)
    if mode == "vtx":
        ev = vtx_exits(counters)
        n_exits = sum(ev.values())
        return retired * p.native_cpi + n_exits * p.vmexit + io * p.software_device
    raise BadInput(f"cost model: unknown mode '{mode}' (emulate, trap, bt, vtx)")


def describe_params(p: CostParams = CostParams()) -> list[tuple[str, float]]:
    return [(f.name, getattr(p, f.name)) for f in fields(p)]
