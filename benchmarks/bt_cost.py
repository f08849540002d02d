"""Where bt's time goes: the same demo under bt with the VMM's memory hooks
switched off one by one, in ONE process, rounds interleaved (docs/benchmarks.md,
"bt's speed after the fidelity work").

Usage:
    python benchmarks/bt_cost.py [--demos hotflags,timer] [--rounds 8] [--json]

Configurations (each a fresh VM; CPU seconds of `vm.run()`, process time, so
other load on a shared machine counts less than in wall time):

emulate     the reference.
bt          as shipped.
no-guard    bt with the hypervisor area mapped with guest permissions and the
            isolation guard (runtime/isolation.py) not hooked: stub accesses to
            the state page and the tables raise no protection event.  Measurement
            only: the guest could read and write the VMM here.
no-hooks    no-guard, and also no UC_HOOK_MEM_WRITE at all (CSAM's per-page
            code-write hooks, runtime/csam.py, and the shadow-GDT accessed-bit
            hook, runtime/trap.py): Unicorn's fast TLB path for every guest load
            and store.  Measurement only: self-modifying code goes unseen (no demo
            measured here writes its code).

Every configuration must give emulate's serial output and exit status (checked).
Also printed: the guard's count of stub accesses (each one a protection event)."""
from __future__ import annotations

import argparse
import ctypes
import io
import json
import mmap
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unicorn import UC_PROT_ALL  # noqa: E402

from bt.hyper_layout import HYPER_SIZE  # noqa: E402
from bt.images import load_image  # noqa: E402
from bt.machine import MachineConfig  # noqa: E402
from runtime import clock, hyper, isolation, trap  # noqa: E402
from runtime.vm import VM  # noqa: E402

CONFIGS = ("emulate", "bt", "no-guard", "no-hooks")


def _map_open(self, base: int) -> None:
    """HyperArea.map_at with every permission: no protection events."""
    self._mem = mmap.mmap(-1, HYPER_SIZE)
    self.host = ctypes.addressof(ctypes.c_char.from_buffer(self._mem))
    self.uc.mem_map_ptr(base, HYPER_SIZE, UC_PROT_ALL, self.host)


def _no_arm(self) -> None:
    self._hook = None


def _no_watch(self, ranges) -> None:
    return None


def _no_gdt_hook(self) -> None:
    self._gdt_hook = None


@contextmanager
def configured(name: str):
    """Patch the runtime classes for one configuration (restored afterwards)."""
    saved = [(hyper.HyperArea, "map_at"), (isolation.Isolation, "arm"),
             (clock.InstructionClock, "watch_code_writes"), (trap.TrapMode, "hook_shadow_gdt")]
    old = [getattr(c, a) for c, a in saved]
    try:
        if name in ("no-guard", "no-hooks"):
            hyper.HyperArea.map_at = _map_open
            isolation.Isolation.arm = _no_arm
        if name == "no-hooks":
            clock.InstructionClock.watch_code_writes = _no_watch
            trap.TrapMode.hook_shadow_gdt = _no_gdt_hook
        yield
    finally:
        for (c, a), f in zip(saved, old):
            setattr(c, a, f)


def run_once(demo: str, name: str) -> tuple[float, object, dict]:
    with configured(name):
        vm = VM(load_image(f"demo:{demo}", mem_bytes=64 << 20),
                MachineConfig(mode="emulate" if name == "emulate" else "bt"), stdout=io.BytesIO())
        t0 = time.process_time()
        r = vm.run()
        cpu = time.process_time() - t0
    guard = vm.guard.stats() if vm.guard is not None else {}
    return cpu, r, guard


def measure(demos: list[str], rounds: int) -> dict:
    out = {"rounds": rounds, "demos": []}
    for demo in demos:
        cpu = {c: [] for c in CONFIGS}
        ref = None
        events, retired = {}, {}
        for _ in range(rounds):
            for c in CONFIGS:
                t, r, guard = run_once(demo, c)
                if ref is None:
                    ref = r
                if (r.serial, r.exit_status) != (ref.serial, ref.exit_status):
                    raise SystemExit(f"demo:{demo} under {c} differs from emulate")
                cpu[c].append(t)
                retired[c] = r.retired
                events[c] = guard.get("stub_accesses", 0)
        bt_min = min(cpu["bt"])
        out["demos"].append({
            "demo": demo,
            "configs": {c: {"cpu_s": v, "min_s": min(v), "median_s": statistics.median(v),
                            "min_over_bt": min(v) / bt_min, "stub_accesses": events[c],
                            "retired": retired[c]}
                        for c, v in cpu.items()}})
    return out


def show(d: dict) -> None:
    print(f"CPU seconds of vm.run(), {d['rounds']} interleaved rounds, one process\n")
    print(f"{'demo':9} {'config':9} {'min s':>7} {'median s':>9} {'min/bt':>7} {'stub accesses':>14}")
    for dm in d["demos"]:
        for c, m in dm["configs"].items():
            print(f"{dm['demo']:9} {c:9} {m['min_s']:7.3f} {m['median_s']:9.3f} {m['min_over_bt']:7.2f} "
                  f"{m['stub_accesses']:14,}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demos", default="hotflags,timer")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    d = measure([x for x in a.demos.split(",") if x], max(1, a.rounds))
    print(json.dumps(d, indent=2)) if a.json else show(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
