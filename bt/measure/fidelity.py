"""Fidelity checking: does a mode keep the guest's behaviour identical to pure
emulation (Popek & Goldberg's equivalence)?

`compare(image, config, mode)` runs the image under `emulate` (the reference) and
under `mode`, compares what the guest could observe (bt.measure.observe), and when
they differ finds *where*:

* trap: trap mode retires exactly the guest's instructions, so the two runs can be
  put in lock-step by instruction count.  Re-running both sides from boot with
  `max_instructions = n` gives their states after n instructions; a galloping
  search then a bisection find the first n whose states differ, and the instruction
  executed as the n-th (at the common EIP after n-1) is named with capstone and
  the catalog, with what it did differently.
* bt: the same lock-step.  bt's clock counts guest instructions, not stub
  instructions (a stub instruction weighs the guest instructions it translates:
  runtime/_clock.c), and every mode takes interrupts at the same instruction
  (docs/fidelity.md, "Exact virtual time"), so after n instructions both runs
  must be in the same architectural state -- registers, flags, selectors as the
  guest sees them, the guest's RAM with patches hidden, serial output -- and the
  first n where they are not names the culprit.  When the serial output differs,
  the bt run is also replayed over the window since the previous line, watching
  guest reads of patched bytes and exits there (they name the patch site the
  guest tripped over); that window is the fallback when the lock-step finds no
  first difference.

Verdicts: "identical"; "timing-only" (trap only: serial output and exit status
agree, guest state differs, and the first difference is an interrupt delivered
at another instruction -- trap's popfd at CPL 1 never sets IF, its predicted
leak, so interrupts land later; under bt a difference in time is a divergence);
"divergent".  The retired-instruction count is compared too: it is the guest's
virtual time (rdtsc, timer interrupts).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bt.machine import MachineConfig
from bt.mode import Mode
from bt.measure import describe
from bt.measure.observe import Observation, ram_differences, run

IDENTICAL, TIMING, DIVERGENT = "identical", "timing-only", "divergent"
READ_WATCH_LIMIT = 20_000_000     # longest bt replay we watch reads in (instructions)


@dataclass
class FidelityReport:
    image: str
    mode: Mode
    verdict: str
    differences: list[dict] = field(default_factory=list)   # aspect + detail
    divergence: dict | None = None                          # the named first difference
    reference: Observation | None = field(default=None, repr=False)
    other: Observation | None = field(default=None, repr=False)

    @property
    def status(self) -> int:
        """bt-run --compare exit status: 0 identical or timing-only, 1 divergent."""
        return 1 if self.verdict == DIVERGENT else 0

    def as_dict(self) -> dict:
        return {"image": self.image, "mode": self.mode, "verdict": self.verdict,
                "differences": self.differences, "divergence": self.divergence}

    def text(self) -> str:
        lines = [f"fidelity: {self.image} under {self.mode} vs emulate: {self.verdict}"]
        for d in self.differences:
            lines.append(f"  {d['aspect']}: {d['detail']}")
        dv = self.divergence
        if dv:
            lines.append(f"  first divergence: {dv['headline']}")
            for k in ("catalog", "where", "note"):
                if dv.get(k):
                    lines.append(f"    {k}: {dv[k]}")
            for e in dv.get("effects", [])[1:]:
                lines.append(f"    also: {e}")
            for r in dv.get("patched_reads", []):
                lines.append(f"    read of patched code: {r}")
            for s in dv.get("exit_sites", []):
                lines.append(f"    exit in window: {s}")
        return "\n".join(lines)


def compare(image, config: MachineConfig, mode: Mode | str, *, locate: bool = True,
            reference: Observation | None = None, other: Observation | None = None) -> FidelityReport:
    """Run (or reuse) both sides and report; `locate` searches for the first divergence."""
    mode = Mode.parse(mode)
    ref = reference or run(image, config, Mode.EMULATE, config.max_instructions, keep_ram=True)
    oth = other or run(image, config, mode, config.max_instructions, keep_ram=True)
    rep = FidelityReport(_name(image), mode, IDENTICAL, reference=ref, other=oth)
    rep.differences = final_differences(ref, oth)
    if not rep.differences:
        return rep
    outputs_agree = not any(d["aspect"] in ("serial", "exit") for d in rep.differences)
    rep.verdict = DIVERGENT
    if locate:
        rep.divergence = locate_by_count(image, config, mode, ref, oth)
        if mode is not Mode.TRAP and ref.serial != oth.serial:
            window = locate_by_serial(image, config, mode, ref, oth)
            if rep.divergence is None or rep.divergence.get("kind") in ("end", "boot"):
                rep.divergence = window
            else:
                for k in ("patched_reads", "exit_sites", "note"):
                    if window.get(k):
                        rep.divergence[k] = window[k]
                rep.divergence["serial_window"] = window["where"]
    injected = ref.counters.get("interrupts_injected") or oth.counters.get("interrupts_injected")
    dv = rep.divergence
    if mode is Mode.TRAP and outputs_agree and injected \
            and (dv is None or dv.get("kind") in ("interrupt-timing", "state")):
        rep.verdict = TIMING
    return rep


def _name(image) -> str:
    return getattr(image, "name", None) or getattr(image, "path", "?")


def final_differences(ref: Observation, oth: Observation) -> list[dict]:
    out = []
    if ref.exit_status != oth.exit_status or ref.reason != oth.reason:
        out.append({"aspect": "exit", "detail": f"emulate {ref.reason} (status {ref.exit_status}), "
                    f"{oth.mode} {oth.reason} (status {oth.exit_status})"})
    if ref.serial != oth.serial:
        out.append({"aspect": "serial", "detail": serial_difference(ref.serial, oth.serial, oth.mode)})
    regs = register_differences(ref.regs, oth.regs)
    if regs:
        out.append({"aspect": "registers", "detail": ", ".join(
            f"{k} {e:#x} (emulate) vs {o:#x}" for k, (e, o) in regs.items())})
    if ref.ram_digest != oth.ram_digest:
        detail = f"digest {ref.ram_digest} (emulate) vs {oth.ram_digest}"
        if ref.ram is not None and oth.ram is not None:
            ranges = ram_differences(ref.ram, oth.ram)
            detail += "; differs at " + ", ".join(f"{a:#x}-{b - 1:#x}" for a, b in ranges)
        out.append({"aspect": "ram", "detail": detail})
    if ref.retired != oth.retired:
        out.append({"aspect": "retired", "detail": f"{ref.retired:,} instructions (emulate) vs "
                    f"{oth.retired:,}: virtual time differs"})
    return out


def register_differences(a: dict, b: dict) -> dict:
    return {k: (a.get(k, 0), b.get(k, 0)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def serial_difference(a: bytes, b: bytes, mode: str) -> str:
    la, lb = a.split(b"\n"), b.split(b"\n")
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return (f"line {i + 1}: emulate {x.decode('latin-1')!r}, "
                    f"{mode} {y.decode('latin-1')!r}")
    return f"emulate printed {len(la)} lines, {mode} {len(lb)}"


def first_differing_line(a: bytes, b: bytes) -> tuple[int, int]:
    """(line index, byte offset of that line's start) of the first line that differs."""
    off = 0
    la, lb = a.split(b"\n"), b.split(b"\n")
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return i, off
        off += len(x) + 1
    return min(len(la), len(lb)), off


# -- trap: lock-step by instruction count ------------------------------------------
def locate_by_count(image, config, mode, ref: Observation, oth: Observation) -> dict | None:
    cache: dict = {}

    def state(m: str, n: int) -> Observation:
        if (m, n) not in cache:
            cache[(m, n)] = run(image, config, m, n)
        return cache[(m, n)]

    def differs(n: int) -> bool:
        return state("emulate", n).key() != state(mode, n).key()

    hi_limit = min(ref.retired, oth.retired)
    if config.max_instructions is not None:
        hi_limit = min(hi_limit, config.max_instructions)
    if hi_limit <= 0 or not differs(hi_limit):
        longer = "emulate" if ref.retired > oth.retired else mode
        return {"kind": "end", "count": hi_limit,
                "headline": f"the runs agree for {hi_limit:,} instructions; then {longer} "
                            f"continues and the other stops",
                "effects": []}
    if differs(0):
        return {"kind": "boot", "count": 0, "headline": "the guest-visible state differs at boot",
                "effects": []}
    lo, hi = 0, 1                       # galloping: divergences are often early
    while hi < hi_limit and not differs(hi):
        lo, hi = hi, min(hi * 2, hi_limit)
    while hi - lo > 1:                  # invariant: equal at lo, different at hi
        mid = (lo + hi) // 2
        if differs(mid):
            hi = mid
        else:
            lo = mid
    return _name_at_count(image, config, mode, hi)


def _name_at_count(image, config, mode, n: int) -> dict:
    before, vm = run(image, config, "emulate", n - 1, keep_vm=True)
    eip = before.regs.get("eip", 0)
    insn = describe.instruction(vm.mem.try_read(eip, 15), eip)
    e = run(image, config, "emulate", n, keep_ram=True)
    o = run(image, config, mode, n, keep_ram=True)
    regs = register_differences(e.regs, o.regs)
    interrupts = (e.counters.get("interrupts_injected"), o.counters.get("interrupts_injected"))
    mems = _mem_diffs(e.ram, o.ram)
    if interrupts[0] != interrupts[1]:
        return {"kind": "interrupt-timing", "count": n, "instruction": insn,
                "headline": f"an interrupt was delivered at instruction {n:,} in one run only "
                            f"(emulate {interrupts[0]}, {mode} {interrupts[1]})",
                "effects": describe.effects(insn, regs, mems, mode),
                "where": f"after {n - 1:,} instructions, at {eip:#x}"}
    eff = describe.effects(insn, regs, mems, mode)
    if e.serial != o.serial and not eff:
        eff = [f"printed {serial_difference(e.serial, o.serial, mode)}"]
    out = {"kind": "instruction", "count": n, "instruction": insn,
           "headline": describe.headline(insn, eff),
           "catalog": describe.catalog_note(insn), "effects": eff,
           "where": f"instruction {n:,} of the run (lock-step by instruction count)"}
    note = _translation_note(image, config, mode, n - 1, eip)
    if note:
        out["note"] = note
    return out


def _translation_note(image, config, mode, n: int, eip: int) -> str | None:
    """How `mode` ran the guest instruction at `eip` (after n instructions, where
    both runs agree): through a patch's stub, or -- a cause of its own -- the
    patch bytes themselves, entered in the middle of the bytes a jump patch
    replaced.  None for modes without patches."""
    from unicorn import x86_const as X
    _, vm = run(image, config, mode, n, keep_vm=True)
    patcher = getattr(vm.mode, "patcher", None)
    if patcher is None:
        return None
    raw = vm.uc.reg_read(X.UC_X86_REG_EIP)
    p = patcher.stub_owner(raw)
    if p is not None:
        return (f"{mode} ran it in the stub of the {p.name} patch at {p.site:#x} "
                f"(stub {p.stub:#x}, instruction at {raw:#x})")
    p = patcher.covering(eip)
    if p is not None and p.kind == "jump" and p.site < eip < p.site + len(p.orig):
        return (f"{mode} entered the bytes its jump patch at {p.site:#x} ({p.name}) replaced, "
                f"at {eip:#x}: the CPU ran patch bytes, not the guest's instruction")
    if p is not None and p.site == eip:
        return f"{mode} ran the {p.kind} patch at {p.site:#x} ({p.name}) there"
    return None


def _mem_diffs(a: bytes, b: bytes) -> list[dict]:
    out = []
    for lo, hi in ram_differences(a, b):
        d = {"address": lo, "emulate": a[lo:hi].hex(), "other": b[lo:hi].hex()}
        base = lo & ~3
        if hi <= base + 4:
            d["emulate_dword"] = int.from_bytes(a[base:base + 4], "little")
            d["other_dword"] = int.from_bytes(b[base:base + 4], "little")
        out.append(d)
    return out


# -- bt: synchronise on serial output -------------------------------------------------
def _count_reaching(image, config, mode, nbytes: int, total: int) -> int:
    """Smallest instruction count after which the run has printed >= nbytes bytes."""
    lo, hi = 0, total
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(run(image, config, mode, mid).serial) >= nbytes:
            hi = mid
        else:
            lo = mid
    return hi


def locate_by_serial(image, config, mode, ref: Observation, oth: Observation) -> dict | None:
    if ref.serial == oth.serial:
        return {"kind": "state", "headline": "serial output and exit agree; final guest state "
                "differs (instruction counts of the two modes do not line up, so the state "
                "is compared at the end only)", "effects": []}
    line, start = first_differing_line(ref.serial, oth.serial)
    common = start
    while common < min(len(ref.serial), len(oth.serial)) and ref.serial[common] == oth.serial[common]:
        common += 1
    text = serial_difference(ref.serial, oth.serial, mode)
    end = _count_reaching(image, config, mode, common + 1, oth.retired) if common < len(oth.serial) \
        else oth.retired
    begin = _count_reaching(image, config, mode, start, end) if start > 0 else 0
    out = {"kind": "serial", "line": line + 1, "headline": f"serial {text}",
           "where": f"{mode} instructions {begin:,}-{end:,} (from the start of the line to the "
                    f"first differing byte)", "effects": []}
    if end <= READ_WATCH_LIMIT:
        reads, exits = _watch_window(image, config, mode, begin, end)
        out["patched_reads"] = reads
        out["exit_sites"] = exits
        if reads:
            out["headline"] += f"; the guest read patched code ({reads[0]})"
            out["note"] = ("guest reads of code the VMM has patched see the patch, not the "
                           "guest's bytes")
    return out


def _watch_window(image, config, mode, begin: int, end: int) -> tuple[list[str], list[str]]:
    """Replay `mode` to `end`, recording guest reads (from `begin` on) whose bytes differ
    from what the guest wrote (patch jumps, guards), and the exit sites in the window."""
    from unicorn import UC_HOOK_MEM_READ
    from unicorn import x86_const as X
    from runtime.vm import VM
    from bt.measure.observe import _Sink, with_mode
    vm = VM(image, with_mode(config, mode, end), stdout=_Sink())
    visible = getattr(vm.mode, "guest_visible", None)
    ram = config.mem_bytes
    reads: list[str] = []
    seen: set = set()

    def on_read(uc, access, addr, size, value, data):
        if visible is None or vm.now() < begin or len(reads) >= 8:
            return
        cur = bytes(uc.mem_read(addr, size))
        orig = visible(addr, size)
        guards = getattr(vm.mode, "guards", {})
        if cur == orig and not any(addr <= g < addr + size for g in guards):
            return
        pc = vm.mode.guest_address(uc.reg_read(X.UC_X86_REG_EIP))
        if (pc, addr) in seen:
            return
        seen.add((pc, addr))
        site = vm.mode.patcher.covering(addr) if hasattr(vm.mode, "patcher") else None
        what = f"patched {site.covered[0].mnemonic} site {site.site:#x}" if site else "patched bytes"
        reads.append(f"instruction at {pc:#x} read {cur.hex()} at {addr:#x} ({what}; the guest "
                     f"wrote {orig.hex()})")

    vm.uc.hook_add(UC_HOOK_MEM_READ, on_read, None, 0, ram - 1)
    before = run(image, config, mode, begin).counters.get("exit_sites", {}) if begin else {}
    res = vm.run()
    after = res.counters.get("exit_sites", {})
    exits = []
    for site, count in after.items():
        n = count - before.get(site, 0)
        if n > 0:
            addr = int(site, 16)
            code = bytes(visible(addr, 15)) if visible and addr + 15 <= ram else vm.mem.try_read(addr, 15)
            insn = describe.instruction(code, addr)
            exits.append(f"{insn['text']} at {addr:#x} x{n} ({describe.catalog_note(insn)})")
    return reads, exits[:10]
