"""Modes: parsed once (Mode.parse), with one-line errors listing the choices."""
import json

import pytest

from bt import api
from bt.cli import bench as bench_cli
from bt.cli import run as cli
from bt.errors import BadInput
from bt.machine import MachineConfig
from bt.mode import MODES, Mode


def test_parse_accepts_names_and_members():
    assert [Mode.parse(t) for t in ("emulate", "trap", "bt")] == [Mode.EMULATE, Mode.TRAP, Mode.BT]
    assert Mode.parse(Mode.BT) is Mode.BT
    assert MODES == (Mode.EMULATE, Mode.TRAP, Mode.BT) and MODES[0].is_reference


@pytest.mark.parametrize("bad", ["fast", "", "BT", " bt", None, 3])
def test_parse_rejects_anything_else_in_one_line(bad):
    with pytest.raises(BadInput) as e:
        Mode.parse(bad)
    assert str(e.value) == f"unknown mode {str(bad)!r} (choose from emulate, trap, bt)"


def test_a_mode_reads_as_its_name():
    assert Mode.BT == "bt" and {"bt": 1}[Mode.BT] == 1 and f"{Mode.TRAP}" == "trap"
    assert json.dumps([Mode.EMULATE]) == '["emulate"]'


def test_machine_config_holds_a_mode():
    assert MachineConfig().mode is Mode.EMULATE
    assert MachineConfig(mode="bt").mode is Mode.BT
    with pytest.raises(BadInput, match="unknown mode 'fast'"):
        MachineConfig(mode="fast")


def test_api_takes_mode_strings_and_reports_them_unchanged():
    r = api.run("demo:hello", "trap", mem_mib=4)
    assert r.mode is Mode.TRAP and r.summary()["mode"] == "trap"
    rep = r.report()
    assert rep["mode"] == "trap" and json.loads(json.dumps(rep))["reason"] == "debug-exit"


def test_bt_run_rejects_an_unknown_mode_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo:hello", "--mode", "nonsense"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--mode" in err and "nonsense" in err, err
    with pytest.raises(SystemExit) as e:
        cli.main(["demo:hello", "--compare", "emulate"])    # emulate is the reference itself
    assert e.value.code == 2


def test_bt_bench_modes_are_parsed_with_mode(tmp_path, capsys):
    assert bench_cli._parse_modes("bt, emulate") == (Mode.EMULATE, Mode.BT)
    for text, msg in (("fast", r"^--modes: unknown mode 'fast' \(choose from emulate, trap, bt\)$"),
                      (",", "no mode"), ("bt,bt", "names a mode twice")):
        with pytest.raises(BadInput, match=msg):
            bench_cli._parse_modes(text)
    assert bench_cli.main(["demo:hello", "--modes", "nonsense", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
