"""Every demo in every mode behaves exactly as the checked-in snapshot says:
serial output, status, retired instructions, virtual time, registers, every
counter and patch/CSAM statistic (bt/measure/snapshot.py).  A refactoring keeps
this green; a deliberate change regenerates the file and names what moved."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bt.demos import list_demos
from bt.measure.snapshot import MODES, differences, snapshot_one

SNAPSHOT = json.loads((Path(__file__).parent / "demo_snapshot.json").read_text())


def test_snapshot_covers_every_demo_and_mode():
    assert set(SNAPSHOT) == {f"{d}/{m}" for d in list_demos() for m in MODES}


@pytest.mark.parametrize("run", sorted(SNAPSHOT))
def test_run_matches_snapshot(run):
    demo, mode = run.split("/")
    assert differences({run: SNAPSHOT[run]}, {run: snapshot_one(demo, mode)}) == []


def test_differences_names_each_changed_value():
    a = {"x/bt": {"retired": 5, "counters.exits": 2}}
    b = {"x/bt": {"retired": 6, "counters.exits": 2, "report.new": 1}}
    assert differences(a, b) == ["x/bt: report.new: '<absent>' -> 1", "x/bt: retired: 5 -> 6"]
