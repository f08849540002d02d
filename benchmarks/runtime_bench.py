"""Runtime benchmarks for issues 4 (`--mode trap`) and 5 (`--mode bt`).

Usage:
    python benchmarks/runtime_bench.py exit-cost  [--exits N] [--repeat R] [--insn clts,mov-cr0,out] [--profile]
    python benchmarks/runtime_bench.py cpu-ratio  [--iterations N] [--repeat R] [--modes emulate,trap,bt]
    python benchmarks/runtime_bench.py bt-vs-trap [--demos timer,hotflags]
    python benchmarks/runtime_bench.py code-reads [--iterations N] [--repeat R]
    python benchmarks/runtime_bench.py all
Every subcommand takes --json (print one JSON document instead of the tables).

exit-cost   Cost of one exit into Python and back.  A raw guest runs N times
            `INSN ; dec ecx ; jnz` at CPL 1 under --mode trap, where INSN traps
            (clts, mov eax,cr0: #GP emulated; out 0x70,al: the I/O hook; port
            0x80 is answered natively since issue 19, runtime/iofast.py; cli was
            the first of them until the guest's IF moved into the real EFLAGS).  The
            baseline is the same loop with `nop`, which never exits.  Reported:
            (wall - baseline wall) / exits, and the VMM's own vmm_time / exits,
            the floor a bare Unicorn engine pays for one Python hook call, and a
            breakdown of the VMM's share from timers wrapped around its parts.
cpu-ratio   Guest instructions per second on a CPU-bound raw guest that exits
            once (to stop) under emulate, trap and bt, as a ratio to a bare
            `unicorn.Uc` running the same bytes with no hooks and no count in
            the same process.  Runs alternate; medians of per-round ratios.  A
            bare engine run with `count=` shows what Unicorn's own exact
            counting costs (the VM counts per block instead, runtime/clock.py).
bt-vs-trap  Exits per million guest instructions on demo:timer and
            demo:hotflags under trap and bt (emulate gives the reference output
            and the guest instruction count), device I/O exits apart from
            virtualization exits, and the bt/trap ratio (target <= 1%).
code-reads  Guest loads under bt with patch bytes hidden from reads on every
            page (hide_patches="every-page") and only on pages the guest wrote
            code on ("written-pages"), against the bare engine: loads from a
            data page, from data sharing the code page, and a checksum over
            the code itself (hidden reads, exits: no churn).

Every subcommand runs each guest/mode at least twice and checks that the two
runs give identical counters, instruction counts, output, final registers and
mode report (wall-clock figures aside): the "deterministic" column.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bt.errors import BadInput  # noqa: E402
from bt.images import load_image  # noqa: E402
from bt.images.image import GuestImage, Segment  # noqa: E402
from bt.machine import MachineConfig  # noqa: E402
from bt.mode import MODES  # noqa: E402

LOAD = 0x100000          # raw guests' code (1 MiB, above pc32's boot structures)
DATA = 0x200000          # raw guests' data: its own page, never a code page (bt monitors those)
STACK = 0x90000
# Instructions the exit-cost guest can loop on: name -> (assembly, exit path).
TRAP_INSNS = {
    "clts": ("clts", "#GP -> emulation routine"),
    "mov-cr0": ("mov eax, cr0", "#GP -> emulation routine"),
    "out": ("out 0x70, al", "I/O hook -> device bus"),
}


# -- guests --------------------------------------------------------------------------
def assemble(src: str, addr: int = LOAD) -> bytes:
    from keystone import Ks, KS_ARCH_X86, KS_MODE_32
    encoding, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(src, addr)
    return bytes(encoding)


def raw_image(name: str, code: bytes) -> GuestImage:
    return GuestImage(path=f"bench:{name}", format="raw", entry=LOAD,
                      segments=[Segment(LOAD, code)], regs={"esp": STACK}, name=name)


def trap_loop_source(insn: str, n: int) -> str:
    """n x (insn ; dec ecx ; jnz), then status 0 to the debug-exit port."""
    return "\n".join([f"mov ecx, {n}", "l:", insn, "dec ecx", "jnz l",
                      "mov al, 0", "out 0xf4, al", "hlt"])


def cpu_loop_source(n: int) -> tuple[str, str]:
    """demo:cpuloop's inner loop (ALU work and a store into a 256-byte ring), with
    the ring on its own data page so bt's code-page write monitor never sees it.
    Returns (work, stop): the bare engine runs `work` only; the VM also runs
    `stop` (status 0 to the debug-exit port).  The result is left in ebx."""
    work = "\n".join([
        f"mov ecx, {n}", "xor eax, eax", "mov ebx, 0x9e3779b9", "xor edx, edx",
        "l:", "add eax, ebx", "rol eax, 5", "xor eax, ecx",
        f"mov dword ptr [{DATA:#x} + edx], eax", "add edx, 4", "and edx, 0xff",
        "dec ecx", "jnz l", "mov ebx, eax", "mov al, 0"])
    return work, "out 0xf4, al\nhlt"


CPU_LOOP_BODY = 8         # instructions per iteration of cpu_loop_source
CPU_LOOP_SETUP = 4 + 2    # before the loop + the two after it


class _Timers:
    """Inclusive perf_counter timers wrapped around VMM functions of one VM instance
    (instance attributes and one ROUTINES entry; nothing in runtime/ is edited)."""

    def __init__(self):
        self.t: dict[str, float] = {}

    def wrap(self, name: str, fn):
        self.t.setdefault(name, 0.0)
        clock = time.perf_counter

        def timed(*a, **k):
            t0 = clock()
            try:
                return fn(*a, **k)
            finally:
                self.t[name] += clock() - t0
        return timed


# -- running ---------------------------------------------------------------------------
def run_vm(image: GuestImage, mode: str, **cfg):
    """Run to the end and return the run's result."""
    from runtime.vm import VM
    return VM(image, MachineConfig(mode=mode, **cfg), stdout=io.BytesIO()).run()


def fingerprint(r) -> dict:
    """Everything a run reports except wall-clock figures."""
    return {"exit_status": r.exit_status, "reason": r.reason, "retired": r.retired,
            "vtime": r.vtime, "serial": r.serial.hex(), "counters": r.counters,
            "regs": r.regs, "extra": r.extra}


def same(a, b) -> bool:
    return json.dumps(fingerprint(a), sort_keys=True, default=str) == \
        json.dumps(fingerprint(b), sort_keys=True, default=str)


def check_ok(r, what: str) -> None:
    if r.exit_status != 0 or r.reason != "debug-exit":
        raise SystemExit(f"{what}: guest did not finish cleanly ({r.reason}, status "
                         f"{r.exit_status}: {r.message})")


def machine_info() -> dict:
    import unicorn
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    load = ""
    try:
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
    except OSError:
        pass
    return {"python": platform.python_version(), "unicorn": unicorn.__version__,
            "cpu": cpu, "cores": os.cpu_count(), "loadavg_at_start": load}


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in [headers] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def positive(text: str) -> int:
    try:
        v = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def choices(text: str, allowed, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise BadInput(f"unknown {what} {', '.join(bad) or repr(text)} (choose from {', '.join(allowed)})")
    return items


# -- 1. exit cost ---------------------------------------------------------------------------
def bare_hook_floor(n: int, repeat: int) -> dict:
    """What a bare engine pays per Python callback: a loop of `int3` (a fault Unicorn
    reports to UC_HOOK_INTR, like #GP but never a #DF) with an empty hook, and a loop
    of `out` with an empty UC_HOOK_INSN hook, each minus the same loop of `nop`."""
    from unicorn import Uc, UC_ARCH_X86, UC_MODE_32, UC_HOOK_INTR, UC_HOOK_INSN
    from unicorn import x86_const as X

    def once(insn: str, hook: str | None) -> float:
        code = assemble("\n".join([f"mov ecx, {n}", "l:", insn, "dec ecx", "jnz l", "hlt"]))
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0, 4 << 20)
        uc.mem_write(LOAD, code)
        uc.reg_write(X.UC_X86_REG_ESP, STACK)
        if hook == "intr":
            uc.hook_add(UC_HOOK_INTR, lambda uc, intno, user: None)
        elif hook == "out":
            uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, value, user: None, None, 1, 0,
                        X.UC_X86_INS_OUT)
        t0 = time.perf_counter()
        uc.emu_start(LOAD, LOAD + len(code) - 1)
        return time.perf_counter() - t0

    out = {}
    for insn, hook, key in (("int3", "intr", "fault_hook_us"), ("out 0x80, al", "out", "insn_hook_us")):
        diffs = []
        for _ in range(repeat):
            base = once("nop", None)
            diffs.append((once(insn, hook) - base) / n * 1e6)
        out[key] = statistics.median(diffs)
    return out


def exit_breakdown(insn_key: str, n: int) -> dict:
    """One instrumented trap run: microseconds per exit in each part of the exit path."""
    from bt.catalog import classify_bytes
    from runtime import emulation
    from runtime.vm import VM

    asm_text, _ = TRAP_INSNS[insn_key]
    vm = VM(raw_image("exit-" + insn_key, assemble(trap_loop_source(asm_text, n))),
            MachineConfig(mode="trap"), stdout=io.BytesIO())
    tm = _Timers()
    mnemonic = classify_bytes(assemble(asm_text)).name      # routines are keyed by catalog row
    saved = emulation.ROUTINES.get(mnemonic)
    vm.exit_site = tm.wrap("exit_site: exit counters", vm.exit_site)
    vm.quirks.take_fault = tm.wrap("quirks.take_fault: fault fields in place", vm.quirks.take_fault)
    vm.mode.on_fault = tm.wrap("_on_fault", vm.mode.on_fault)
    vm.mode.decoder.at = tm.wrap("decoder.at: decode (cached per site)", vm.mode.decoder.at)
    vm.bus.write = tm.wrap("bus.write: device model", vm.bus.write)
    if saved is not None:
        emulation.ROUTINES[mnemonic] = tm.wrap(f"emulation routine '{mnemonic}'", saved)
    try:
        r = vm.run()
    finally:
        if saved is not None:
            emulation.ROUTINES[mnemonic] = saved
    check_ok(r, "exit breakdown")
    exits = r.counters["exits"] - 1        # the final `out 0xf4` is not part of the loop
    t = dict(tm.t)
    on_fault = t.pop("_on_fault")
    parts = {k: v for k, v in t.items() if v}
    inner = sum(v for k, v in parts.items() if k.startswith(("decoder", "emulation")))
    if on_fault:
        parts["trap.on_fault: dispatch, counters, EIP write"] = on_fault - inner
    parts["rest of the VM hook (guarded, _on_interrupt/_on_out)"] = r.vmm_time - sum(parts.values())
    return {"exits": exits, "vmm_us": r.vmm_time / exits * 1e6,
            "parts_us": {k: v / exits * 1e6 for k, v in parts.items()}}


def exit_profile(insn_key: str, n: int, top: int = 15) -> str:
    from runtime.vm import VM
    asm_text, _ = TRAP_INSNS[insn_key]
    vm = VM(raw_image("exit-" + insn_key, assemble(trap_loop_source(asm_text, n))),
            MachineConfig(mode="trap"), stdout=io.BytesIO())
    prof = cProfile.Profile()
    prof.enable()
    vm.run()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def bench_exit_cost(args) -> dict:
    insns = choices(args.insn, TRAP_INSNS, "instruction")
    n, repeat = args.exits, args.repeat
    base_img = raw_image("exit-nop", assemble(trap_loop_source("nop", n)))
    results = []
    for key in insns:
        asm_text, path = TRAP_INSNS[key]
        img = raw_image("exit-" + key, assemble(trap_loop_source(asm_text, n)))
        per_wall, per_vmm, walls, base_walls, runs = [], [], [], [], []
        for _ in range(repeat):          # alternate baseline and trapping runs
            b = run_vm(base_img, "trap")
            check_ok(b, "baseline")
            r = run_vm(img, "trap")
            check_ok(r, key)
            exits = r.counters["exits"] - b.counters["exits"]
            if exits < n:
                raise SystemExit(f"{key}: expected {n} exits, the run counted {exits}")
            per_wall.append((r.wall - b.wall) / exits * 1e6)
            per_vmm.append(r.vmm_time / r.counters["exits"] * 1e6)
            walls.append(r.wall)
            base_walls.append(b.wall)
            runs.append(r)
        wall_us = statistics.median(per_wall)
        results.append({
            "insn": key, "asm": asm_text, "path": path, "exits": exits,
            "us_per_exit_wall": wall_us, "us_per_exit_vmm": statistics.median(per_vmm),
            "exits_per_s": 1e6 / wall_us if wall_us > 0 else None,
            "wall_s": statistics.median(walls), "baseline_wall_s": statistics.median(base_walls),
            "samples_us_wall": per_wall,
            "deterministic": all(same(runs[0], x) for x in runs[1:]),
        })
    out = {"benchmark": "exit-cost", "machine": machine_info(), "exits": n, "repeat": repeat,
           "target_us": 15.0, "results": results,
           "bare_engine_floor": bare_hook_floor(n, repeat),
           "breakdown": {k: exit_breakdown(k, n) for k in insns}}
    for res in results:
        res["target_met"] = res["us_per_exit_wall"] <= out["target_us"]
    if args.profile:
        out["profile"] = {k: exit_profile(k, min(n, 20000)) for k in insns}
    return out


def print_exit_cost(d: dict) -> None:
    print(f"Exit cost under --mode trap: {d['exits']:,} exits per run, median of {d['repeat']} "
          f"alternating runs (target <= {d['target_us']:.0f} us)\n")
    rows = [[r["insn"], r["path"], f"{r['exits']:,}", f"{r['wall_s']:.3f}", f"{r['baseline_wall_s']:.3f}",
             f"{r['us_per_exit_wall']:.1f}", f"{r['us_per_exit_vmm']:.1f}",
             f"{r['exits_per_s']:,.0f}" if r["exits_per_s"] else "-",
             "yes" if r["target_met"] else "no", "yes" if r["deterministic"] else "NO"]
            for r in d["results"]]
    print(table(["insn", "exit path", "exits", "wall s", "nop wall s", "us/exit (wall)",
                 "us/exit (vmm_time)", "exits/s", "<= 15 us", "deterministic"], rows))
    f = d["bare_engine_floor"]
    print(f"\nBare Unicorn, empty Python hook, no VMM: {f['fault_hook_us']:.2f} us per fault "
          f"(int3 -> UC_HOOK_INTR), {f['insn_hook_us']:.2f} us per out (UC_HOOK_INSN)")
    for key, b in d["breakdown"].items():
        print(f"\nWhere vmm_time goes, '{key}' (one instrumented run, {b['exits']:,} exits, "
              f"{b['vmm_us']:.1f} us/exit inside the VM's hooks; each timer adds ~0.2 us):")
        rows = [[name, f"{us:.2f}", f"{100 * us / b['vmm_us']:.0f}%"]
                for name, us in sorted(b["parts_us"].items(), key=lambda kv: -kv[1])]
        print(table(["part", "us/exit", "share"], rows))
    for key, text in d.get("profile", {}).items():
        print(f"\ncProfile, '{key}' (20,000 exits at most):\n{text}")


# -- 2. CPU-bound ratio ---------------------------------------------------------------------
def bare_run(code: bytes, until: int, count: int | None = None) -> tuple[float, int]:
    """The same bytes on a bare engine: same RAM size and load address, no hooks."""
    from unicorn import Uc, UC_ARCH_X86, UC_MODE_32
    from unicorn import x86_const as X
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 64 << 20)
    uc.mem_write(LOAD, code)
    uc.reg_write(X.UC_X86_REG_ESP, STACK)
    t0 = time.perf_counter()
    if count is None:
        uc.emu_start(LOAD, until)
    else:
        uc.emu_start(LOAD, 0, count=count)
    wall = time.perf_counter() - t0
    return wall, uc.reg_read(X.UC_X86_REG_EBX)


def bench_cpu_ratio(args) -> dict:
    modes = choices(args.modes, MODES, "mode")
    n, repeat = args.iterations, args.repeat
    work, stop = cpu_loop_source(n)
    code = assemble(work + "\n" + stop)
    until = LOAD + len(assemble(work))                   # the bare engine stops before `out`
    insns = CPU_LOOP_SETUP + CPU_LOOP_BODY * n
    img = raw_image("cpu-loop", code)
    samples = {k: [] for k in ["raw", "raw+count", *modes]}
    ratios = {k: [] for k in ["raw+count", *modes]}
    runs = {m: [] for m in modes}
    result = None
    order = ["raw", "raw+count", *modes]
    for rnd in range(repeat):
        # rotate the order each round so no configuration always runs first or last
        rot = order[rnd % len(order):] + order[:rnd % len(order)]
        ips = {}
        for what in rot:
            if what == "raw":
                wall, ebx = bare_run(code, until)
                result = ebx if result is None else result
                if ebx != result:
                    raise SystemExit("bare engine runs disagree: the benchmark guest is not deterministic")
                ips[what] = insns / wall
            elif what == "raw+count":
                wall, _ = bare_run(code, until, count=insns)
                ips[what] = insns / wall
            else:
                r = run_vm(img, what)
                check_ok(r, f"cpu loop under {what}")
                runs[what].append(r)
                ips[what] = (r.retired - 1) / r.wall          # minus the final out
            samples[what].append(ips[what])
        for k in ratios:
            ratios[k].append(ips[k] / ips["raw"])
    for m in modes:     # same result as the bare engine, checked once every run is done
        if any(r.regs["ebx"] != result for r in runs[m]):
            raise SystemExit(f"{m}: final ebx differs from the bare engine's {result:#x}")
    rows = []
    for k in ["raw", "raw+count", *modes]:
        row = {"config": k, "median_minsn_per_s": statistics.median(samples[k]) / 1e6,
               "samples_minsn_per_s": [s / 1e6 for s in samples[k]]}
        if k != "raw":
            row["median_ratio"] = statistics.median(ratios[k])
            row["ratios"] = ratios[k]
        if k in runs:
            row["deterministic"] = all(same(runs[k][0], x) for x in runs[k][1:])
            row["exits"] = runs[k][0].counters["exits"]
            row["retired"] = runs[k][0].retired
            if k in ("trap", "bt"):
                row["target_met"] = row["median_ratio"] >= 0.45
        rows.append(row)
    return {"benchmark": "cpu-ratio", "machine": machine_info(), "iterations": n,
            "instructions": insns, "repeat": repeat, "target_ratio": 0.45,
            "final_ebx": result, "results": rows}


def print_cpu_ratio(d: dict) -> None:
    print(f"CPU-bound raw guest ({d['instructions']:,} instructions), median of {d['repeat']} rounds; "
          f"ratio = instructions/s over the bare engine's in the same round "
          f"(target >= {d['target_ratio']} for trap and bt)\n")
    rows = []
    for r in d["results"]:
        rows.append([r["config"], f"{r['median_minsn_per_s']:.1f}",
                     f"{r['median_ratio']:.2f}" if "median_ratio" in r else "1 (reference)",
                     " ".join(f"{x:.2f}" for x in r.get("ratios", [])) or "-",
                     f"{r['exits']}" if "exits" in r else "-",
                     {True: "yes", False: "no"}.get(r.get("target_met"), "-"),
                     {True: "yes", False: "NO"}.get(r.get("deterministic"), "-")])
    print(table(["configuration", "M insn/s", "ratio", "ratio per round", "exits", ">= 0.45",
                 "deterministic"], rows))
    print(f"\nAll runs end with ebx = {d['final_ebx']:#x} (the bare engine's).  'raw+count' is the bare "
          "engine with emu_start(count=N), Unicorn's per-instruction counting, which the VM's block clock "
          "(runtime/clock.py) replaced.")


# -- 3. exits under bt versus trap ------------------------------------------------------------
def bench_bt_vs_trap(args) -> dict:
    from bt.demos import expected_output
    demos = choices(args.demos, ("timer", "hotflags"), "demo")
    out = {"benchmark": "bt-vs-trap", "machine": machine_info(), "target_percent": 1.0, "demos": []}
    for name in demos:
        per_mode = {}
        for mode in MODES:
            pair = []
            for _ in range(2):
                r = run_vm(load_image(f"demo:{name}", mem_bytes=64 << 20), mode)
                check_ok(r, f"demo:{name} under {mode}")
                pair.append(r)
            per_mode[mode] = pair
        ref = per_mode["emulate"][0]
        guest_insns = ref.retired       # architectural guest instructions (no stub code)
        rows = {}
        for mode, (r, r2) in per_mode.items():
            c = r.counters
            virt = c["exits"] - c["io_exits"]
            rows[mode] = {
                "retired": r.retired, "exits": c["exits"], "io_exits": c["io_exits"],
                "virtualization_exits": virt,
                "exits_per_m_retired": c["exits"] / r.retired * 1e6,
                "exits_per_m_guest": c["exits"] / guest_insns * 1e6,
                "virt_exits_per_m_guest": virt / guest_insns * 1e6,
                "io_by_port": c["io_by_port"], "faults_emulated": c["faults_emulated"],
                "stub_exits": c["stub_exits"], "scan_exits": c["scan_exits"],
                "interrupts_injected": sum(c["interrupts_injected"].values()),
                "wall_s": [r.wall, r2.wall], "vmm_time_s": [r.vmm_time, r2.vmm_time],
                "output_matches_emulate": r.serial == ref.serial,
                "output_matches_expected": r.serial == expected_output(name),
                "deterministic": same(r, r2),
            }
        t, b = rows["trap"], rows["bt"]
        pct = lambda x, y: 100.0 * x / y if y else None
        out["demos"].append({
            "demo": name, "guest_instructions": guest_insns, "modes": rows,
            "bt_over_trap_percent": pct(b["exits_per_m_guest"], t["exits_per_m_guest"]),
            "bt_over_trap_virt_percent": pct(b["virt_exits_per_m_guest"], t["virt_exits_per_m_guest"]),
            "bt_output_equals_trap": per_mode["bt"][0].serial == per_mode["trap"][0].serial,
        })
    for d in out["demos"]:
        d["target_met"] = d["bt_over_trap_percent"] is not None and d["bt_over_trap_percent"] <= 1.0
    return out


def print_bt_vs_trap(d: dict) -> None:
    print("Exits per million guest instructions (guest instructions = emulate's retired count; "
          "bt's own retired count also includes stub instructions)\n")
    rows = []
    for dm in d["demos"]:
        for mode, m in dm["modes"].items():
            rows.append([dm["demo"], mode, f"{m['retired']:,}", f"{m['exits']:,}", f"{m['io_exits']:,}",
                         f"{m['virtualization_exits']:,}", f"{m['exits_per_m_guest']:,.1f}",
                         f"{m['virt_exits_per_m_guest']:,.1f}", f"{m['wall_s'][0]:.2f}",
                         "yes" if m["output_matches_emulate"] else "NO",
                         "yes" if m["deterministic"] else "NO"])
    print(table(["demo", "mode", "retired", "exits", "I/O exits", "virt. exits", "exits/M",
                 "virt. exits/M", "wall s", "output = emulate", "deterministic"], rows))
    print()
    def pct_text(v):            # None: trap had no such exits to compare with
        return "-" if v is None else f"{v:.3f}%"
    rows = [[dm["demo"], pct_text(dm["bt_over_trap_percent"]), pct_text(dm["bt_over_trap_virt_percent"]),
             "yes" if dm["bt_output_equals_trap"] else "NO", "yes" if dm["target_met"] else "no"]
            for dm in d["demos"]]
    print(table(["demo", "bt/trap, all exits", "bt/trap, virt. exits", "same output", "<= 1%"], rows))


# -- command line -----------------------------------------------------------------------------
# -- 4. guest loads with patches hidden from reads ----------------------------------------------
def code_reads_source(kind: str, n: int) -> tuple[str, str]:
    """(work, stop) of a guest whose code page carries a patch (the pushfd) and that
    then loads n x 2 dwords: from a data page ("loads"), from a table on its code
    page that shares no byte with a patch ("data-on-code-page"), or n passes of a
    checksum over its own code, patch bytes included ("checksum")."""
    head = ["pushfd", "pop edi", f"mov ecx, {n}", "xor ebx, ebx", "xor edx, edx"]
    if kind == "checksum":
        loop = ["l:", f"mov esi, {LOAD:#x}", "i:", "add ebx, dword ptr [esi]", "rol ebx, 1", "add esi, 4",
                "cmp esi, tbl", "jb i", "dec ecx", "jnz l"]
    else:
        src = f"{DATA:#x} + edx" if kind == "loads" else "tbl + edx"
        loop = ["l:", f"mov eax, dword ptr [{src}]", "add ebx, eax", f"mov esi, dword ptr [{src} + 4]",
                "xor ebx, esi", "add edx, 8", "and edx, 0x78", "dec ecx", "jnz l"]
    work = "\n".join(head + loop + ["mov al, 0"])
    return work, "out 0xf4, al\nhlt\n.align 16\ntbl:\n" + "\n".join([".long 0x9e3779b9"] * 32)


CODE_READ_KINDS = ("loads", "data-on-code-page", "checksum")
CODE_READ_DEMOS = ("timer", "hotflags")


def bench_code_reads(args) -> dict:
    """bt with patch bytes hidden from guest loads on every page (MachineConfig
    hide_patches="every-page", runtime/_clock.c) against "written-pages" (no read
    hooks unless the guest wrote code) and the bare engine."""
    rows = []
    for kind in CODE_READ_KINDS + CODE_READ_DEMOS:
        if kind in CODE_READ_DEMOS:             # the demos: bt against bt, no bare engine
            code = until = None
            img = load_image(f"demo:{kind}", mem_bytes=64 << 20)
        else:
            n = args.iterations if kind != "checksum" else max(args.iterations // 2000, 1)
            work, stop = code_reads_source(kind, n)
            code = assemble(work + "\n" + stop)
            until = LOAD + len(assemble(work + "\ntbl:"))   # the bare engine stops before `out`
            img = raw_image("code-reads-" + kind, code)
        walls = {k: [] for k in ("bare", "every-page", "written-pages")}
        runs = {}
        for _ in range(args.repeat):
            if code is not None:
                walls["bare"].append(bare_run(code, until)[0])
            for hide in ("every-page", "written-pages"):
                r = run_vm(img, "bt", hide_patches=hide)
                check_ok(r, f"{kind} under bt ({hide})")
                walls[hide].append(r.wall)
                runs.setdefault(hide, []).append(r)
        bare = statistics.median(walls["bare"]) if walls["bare"] else None
        for hide in ("every-page", "written-pages"):
            r = runs[hide][0]
            csam = r.extra["csam"]
            rows.append({"guest": kind, "hide_patches": hide, "retired": r.retired,
                         "median_wall_s": statistics.median(walls[hide]), "bare_wall_s": bare,
                         "ratio_to_bare": bare / statistics.median(walls[hide]) if bare else None,
                         "exits": r.counters["exits"], "hidden_reads": csam["hidden_reads"],
                         "read_hidden_pages": csam["read_hidden_pages"],
                         "serial": r.serial.decode(errors="replace").strip(),
                         "deterministic": all(same(runs[hide][0], x) for x in runs[hide][1:])})
    return {"benchmark": "code-reads", "machine": machine_info(), "iterations": args.iterations,
            "repeat": args.repeat, "results": rows}


def print_code_reads(d: dict) -> None:
    print(f"bt with patch bytes hidden from guest loads: every page vs only pages the guest wrote "
          f"code on; median of {d['repeat']} runs; ratio = bare engine wall / bt wall\n")
    print(table(["guest", "hide_patches", "retired", "wall s", "ratio to bare", "exits", "hidden reads",
                 "hooked pages", "deterministic"],
                [[r["guest"], r["hide_patches"], f"{r['retired']:,}", f"{r['median_wall_s']:.3f}",
                  f"{r['ratio_to_bare']:.2f}" if r["ratio_to_bare"] else "-", r["exits"], f"{r['hidden_reads']:,}", r["read_hidden_pages"],
                  {True: "yes", False: "NO"}[r["deterministic"]]] for r in d["results"]]))


BENCHES = {
    "exit-cost": (bench_exit_cost, print_exit_cost),
    "cpu-ratio": (bench_cpu_ratio, print_cpu_ratio),
    "bt-vs-trap": (bench_bt_vs_trap, print_bt_vs_trap),
    "code-reads": (bench_code_reads, print_code_reads),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Runtime benchmarks for trap and bt modes (issues 4, 5).")
    sub = p.add_subparsers(dest="bench", required=True)
    e = sub.add_parser("exit-cost", help="cost of one exit into Python and back")
    e.add_argument("--exits", type=positive, default=50_000)
    e.add_argument("--repeat", type=positive, default=3)
    e.add_argument("--insn", default=",".join(TRAP_INSNS), help=f"any of {', '.join(TRAP_INSNS)}")
    e.add_argument("--profile", action="store_true", help="add a cProfile listing per instruction")
    c = sub.add_parser("cpu-ratio", help="CPU-bound guest speed as a ratio to bare Unicorn")
    c.add_argument("--iterations", type=positive, default=6_000_000)
    c.add_argument("--repeat", type=positive, default=3)
    c.add_argument("--modes", default=",".join(MODES))
    t = sub.add_parser("bt-vs-trap", help="exits per million instructions, bt versus trap")
    t.add_argument("--demos", default="timer,hotflags")
    r = sub.add_parser("code-reads", help="guest loads with patch bytes hidden on every page (cause 14)")
    r.add_argument("--iterations", type=positive, default=2_000_000)
    r.add_argument("--repeat", type=positive, default=3)
    a = sub.add_parser("all", help="the benchmarks with their defaults")
    for q in (e, c, t, r, a):
        q.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.bench == "all":
            defaults = {k: parser().parse_args([k]) for k in BENCHES}
            results = {k: fn(defaults[k]) for k, (fn, _) in BENCHES.items()}
            if args.json:
                print(json.dumps(results, indent=2, default=str))
            else:
                for k, (_, show) in BENCHES.items():
                    show(results[k])
                    print()
            return 0
        fn, show = BENCHES[args.bench]
        result = fn(args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        show(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
