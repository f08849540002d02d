"""The run report (`bt-run --report FILE.json`): one JSON document per run.

Its keys are a stable contract (docs/cli.md).  Counters come from the runtime's
declared counters (runtime/counters.py), never re-derived here.
"""
from __future__ import annotations

import json
from pathlib import Path

REPORT_VERSION = 1
COMPARISON_VERSION = 1

# Linux's panic() prints this before it halts or (panic=N) reboots; a reboot
# after a panic otherwise looks like a clean `reboot -f` (status 0).
PANIC_MARK = b"Kernel panic - not syncing"


def guest_panic(serial: bytes) -> str | None:
    """The kernel's first panic line in the serial output (without the printk
    timestamp), or None."""
    at = serial.find(PANIC_MARK)
    if at < 0:
        return None
    end = serial.find(b"\n", at)
    line = serial[at:end if end >= 0 else len(serial)]
    return line.decode("latin-1").rstrip("\r ")


def build_report(image, config, result) -> dict:
    counters = result.counters
    exits = counters.get("exits", 0)
    per_m = exits * 1_000_000 / result.retired if result.retired else 0.0
    wall = result.wall
    return {
        "version": REPORT_VERSION,
        "image": {"path": image.path, "format": image.format, "name": image.name,
                  "entry": hex(image.entry), **({"info": image.info} if image.info else {})},
        "mode": config.mode,
        "options": {
            "mem_mib": config.mem_mib,
            "cpu_mhz": config.cpu_mhz,
            "cmdline": config.cmdline,
            "max_instructions": config.max_instructions,
            "pc_testdev": config.pc_testdev,
            "firmware": config.firmware,
        },
        "retired_instructions": result.retired,
        "virtual_time_instructions": result.vtime,
        "virtual_time_seconds": result.vtime / config.cpu_hz,
        "wall_time_seconds": round(wall, 6),
        "vmm_time_seconds": round(result.vmm_time, 6),
        "guest_time_share": round(max(0.0, 1 - result.vmm_time / wall), 4) if wall > 0 else None,
        "exit_status": result.exit_status,
        "reason": result.reason,
        "message": result.message,
        "serial_output": result.serial.decode("latin-1"),
        "guest_panic": guest_panic(result.serial),
        "exits_per_million_instructions": round(per_m, 3),
        "counters": counters,
        "guest_registers": {k: hex(v) for k, v in result.regs.items()},
        **result.extra,
    }


def comparison_report(rep) -> dict:
    """`bt-run --compare MODE --report FILE`: the fidelity report as JSON
    (docs/cli.md): verdict, differences, the first divergence, and each side's end."""
    def side(obs) -> dict | None:
        if obs is None:
            return None
        return {"mode": obs.mode, "exit_status": obs.exit_status, "reason": obs.reason,
                "message": obs.message, "retired_instructions": obs.retired,
                "serial_output": obs.serial.decode("latin-1"),
                "guest_panic": guest_panic(obs.serial)}
    return {"version": COMPARISON_VERSION, "kind": "comparison", **rep.as_dict(),
            "status": rep.status, "reference": side(rep.reference), "other": side(rep.other)}


def top_sites(counters: dict, n: int = 10) -> list[tuple[str, int]]:
    sites = counters.get("exit_sites", {})
    return sorted(sites.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def write_report(path: str | Path, report: dict) -> None:
    Path(path).write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
