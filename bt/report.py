"""The run report (`bt-run --report FILE.json`): one JSON document per run.

Its keys are a stable contract (docs/cli.md).  Counters come from the runtime's
declared counters (runtime/counters.py), never re-derived here.
"""
from __future__ import annotations

import json
from pathlib import Path

REPORT_VERSION = 1


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
        "exits_per_million_instructions": round(per_m, 3),
        "counters": counters,
        "guest_registers": {k: hex(v) for k, v in result.regs.items()},
        **result.extra,
    }


def top_sites(counters: dict, n: int = 10) -> list[tuple[str, int]]:
    sites = counters.get("exit_sites", {})
    return sorted(sites.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def write_report(path: str | Path, report: dict) -> None:
    Path(path).write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
