"""Run outcomes: one enum for every way a run ends, its exit status, and the
exit-status table of docs/cli.md generated from it."""
import ast
import json
import re
from pathlib import Path

import pytest

from bt.cli import run as cli
from bt.outcome import Outcome, RunStop, render_doc
from conftest import LOAD, assemble, run

ROOT = Path(__file__).resolve().parents[2]


def _runtime_sources():
    return sorted((ROOT / "runtime").rglob("*.py"))


def test_every_outcome_the_runtime_names_is_a_member_and_every_member_is_used():
    named = set()
    for path in _runtime_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "Outcome"):
                named.add(node.attr)
    assert named <= set(Outcome.__members__), named - set(Outcome.__members__)
    assert named == set(Outcome.__members__), set(Outcome.__members__) - named


def _reasons_spelled_as_strings(source: str) -> list[int]:
    """Lines that end a run with a bare string reason (`request_stop("reset", 0)`,
    `self.stop = ("hang", ...)`) instead of an Outcome."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "request_stop" and node.args
                and isinstance(node.args[0], ast.Constant)):
            lines.append(node.lineno)
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple)
                and any(isinstance(t, ast.Attribute) and t.attr == "stop" for t in node.targets)):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_runtime_never_spells_a_reason_as_a_string():
    assert _reasons_spelled_as_strings('link.request_stop("reset", 0)\nself.stop = ("hang", 125, "")') == [1, 2]
    for path in _runtime_sources():
        assert _reasons_spelled_as_strings(path.read_text()) == [], path.relative_to(ROOT)


def test_run_stop_takes_only_outcomes_and_their_statuses():
    assert Outcome.HANG.stop("x") == RunStop(Outcome.HANG, 125, "x")
    assert Outcome.DEBUG_EXIT.stop(status=9).status == 9         # the guest's own
    assert Outcome.DEBUG_EXIT.stop().status == 0
    with pytest.raises(TypeError):
        RunStop("hang", 125)
    with pytest.raises(ValueError, match="always exits with status 124"):
        Outcome.BUDGET.stop(status=3)


def test_an_outcome_reads_and_serializes_as_its_string():
    assert Outcome("triple-fault") is Outcome.TRIPLE_FAULT
    assert Outcome.HANG == "hang" and f"{Outcome.HANG}" == "hang"
    assert json.dumps({"reason": Outcome.VMM_ERROR}) == '{"reason": "vmm-error"}'


def test_docs_cli_exit_status_table_is_fresh():
    path = ROOT / "docs" / "cli.md"
    text = path.read_text()
    assert render_doc(text) == text, (
        "docs/cli.md's exit-status table is stale: regenerate it with "
        f"`cd {ROOT} && python -m bt.outcome --doc`")


def test_docs_cli_statuses_match_the_enum():
    table = re.findall(r"^\| (\S+) \| `([a-z-]+)` \|", (ROOT / "docs" / "cli.md").read_text(), re.M)
    rows = {reason: status for status, reason in table}
    assert set(rows) == {o.value for o in Outcome}
    for o in Outcome:
        assert rows[o.value] == o.status_text(), o


# -- bt-run: a guest gets the outcome and status its ending deserves -----------------
@pytest.fixture
def run_guest(tmp_path, capsys):
    def go(src: str, *args: str):
        img = tmp_path / "guest.bin"
        img.write_bytes(assemble(src))
        report = tmp_path / "report.json"
        status = cli.main([str(img), "--format", "raw", "--load", hex(LOAD), "--report",
                           str(report), *args])
        rep = json.loads(report.read_text())
        return status, rep, capsys.readouterr().err
    return go


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_a_guest_that_halts_for_good_hangs(run_guest, mode):
    status, rep, err = run_guest("cli; hlt", "--mode", mode)
    assert status == Outcome.HANG.status == rep["exit_status"] == 125
    assert rep["reason"] == "hang"
    assert "bt-run: hang (status 125)" in err


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_a_guest_that_spins_exhausts_its_budget(run_guest, mode):
    status, rep, err = run_guest("spin: jmp spin", "--mode", mode, "--max-instructions", "5000")
    assert status == Outcome.BUDGET.status == 124
    assert rep["reason"] == "budget" and rep["retired_instructions"] == 5000
    assert "bt-run: budget: instruction budget exhausted" in err


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_debug_exit_carries_the_guests_own_status(run_guest, mode):
    status, rep, err = run_guest("mov al, 7; out 0xf4, al; hlt", "--mode", mode)
    assert status == rep["exit_status"] == 7
    assert rep["reason"] == "debug-exit"
    assert "bt-run: debug-exit (status 7)" in err


def test_run_result_holds_the_outcome(guest):
    _, res = run(guest("cli; hlt"))
    assert res.reason is Outcome.HANG and res.exit_status == 125


def test_an_interrupted_run_exits_with_the_signals_status():
    assert Outcome.INTERRUPTED.stop(status=130).status == 130     # SIGINT
    assert Outcome.INTERRUPTED.stop(status=143).status == 143     # SIGTERM
    assert Outcome.INTERRUPTED.status_text() == "130/143"
    with pytest.raises(ValueError, match="signal chooses"):
        Outcome.INTERRUPTED.stop(status=0)
