"""The observable result of every demo guest in every mode, as one flat table.

A refactoring must not change what a run does: the serial output, exit status,
retired instructions, virtual time, final registers, every counter and every
patch/CSAM statistic of each (demo, mode) pair stay identical.  This module
takes that snapshot; tests/bt/test_snapshot.py holds the checked-in one
(tests/bt/demo_snapshot.json) against the code as it is.

    python -m bt.measure.snapshot --check tests/bt/demo_snapshot.json
    python -m bt.measure.snapshot --write tests/bt/demo_snapshot.json

A change that means to alter behaviour (a fidelity fix, a new counter)
regenerates the file with --write and says in its commit which lines moved and
why; --check prints those lines first.  Wall-clock figures are left out (they
are not deterministic); everything else is (docs/benchmarks.md, determinism).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODES = ("emulate", "trap", "bt")


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = [x for x in value]
    else:
        out[prefix] = value


def snapshot_one(demo: str, mode: str) -> dict:
    """One run reduced to a flat {path: value} dict (JSON-safe)."""
    from bt import api
    r = api.run(f"demo:{demo}", mode)
    out: dict = {"status": r.exit_status, "reason": str(r.reason), "retired": r.retired,
                 "vtime": r.vtime, "serial": r.serial.decode("latin-1"), "message": r.message}
    _flatten("regs", r.regs, out)
    _flatten("counters", r.counters, out)
    _flatten("report", r.extra, out)
    return out


def take(demos: list[str] | None = None, modes=MODES) -> dict:
    from bt.demos import list_demos
    return {f"{d}/{m}": snapshot_one(d, m) for d in (demos or list_demos()) for m in modes}


def differences(expected: dict, actual: dict) -> list[str]:
    """One line per (run, path) whose value differs, appeared or vanished."""
    lines = []
    for run in sorted(set(expected) | set(actual)):
        a, b = expected.get(run), actual.get(run)
        if a is None or b is None:
            lines.append(f"{run}: {'new run' if a is None else 'run missing'}")
            continue
        for path in sorted(set(a) | set(b)):
            if a.get(path, "<absent>") != b.get(path, "<absent>"):
                lines.append(f"{run}: {path}: {a.get(path, '<absent>')!r} -> "
                             f"{b.get(path, '<absent>')!r}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bt.measure.snapshot", description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="FILE.json")
    g.add_argument("--check", metavar="FILE.json")
    a = p.parse_args(argv)
    snap = take()
    if a.write:
        Path(a.write).write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
        print(f"wrote {a.write}: {len(snap)} runs")
        return 0
    diffs = differences(json.loads(Path(a.check).read_text()), snap)
    for line in diffs:
        print(line)
    print(f"{len(snap)} runs, {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
