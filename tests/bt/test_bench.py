"""bt-bench: the mode matrix, its files, determinism, charts and bad input."""
from __future__ import annotations

import csv
import json

import pytest

from bt.cli import bench as cli
from bt.measure import bench

ARGS = ["demo:hello", "demo:probe-segments", "--mem", "8", "-q"]


def _run(tmp_path, *extra, name="out"):
    out = tmp_path / name
    assert cli.main(ARGS + ["--out", str(out), *extra]) == 0
    return json.loads((out / "bench.json").read_text()), out


def test_bench_files_table_and_verdicts(tmp_path, capsys):
    data, out = _run(tmp_path)
    rows = data["rows"]
    assert [(r["guest"], r["mode"]) for r in rows] == [
        (g, m) for g in ("hello", "probe-segments") for m in ("emulate", "trap", "bt")]
    by = {(r["guest"], r["mode"]): r for r in rows}
    assert by[("probe-segments", "trap")]["fidelity"] == "divergent"
    assert by[("probe-segments", "bt")]["fidelity"] == "identical"
    assert by[("hello", "emulate")]["fidelity"] == "reference"
    assert by[("probe-segments", "bt")]["patches"] > 0
    assert by[("probe-segments", "trap")]["vtx_model_cycles"] > 0
    assert by[("hello", "trap")]["io_exits"] == by[("hello", "emulate")]["io_exits"] > 0
    r = by[("hello", "trap")]
    assert r["exits_per_million"] == round(r["exits"] * 1e6 / r["retired"], 3)
    with open(out / "bench.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    table = capsys.readouterr().out
    assert "probe-segments" in table and "divergent" in table and "VT-x Mcyc" in table


def test_reruns_are_deterministic(tmp_path):
    a, _ = _run(tmp_path, name="a")
    b, _ = _run(tmp_path, name="b")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in bench.NONDETERMINISTIC}
                          for r in rows]
    assert strip(a["rows"]) == strip(b["rows"])


def test_plot_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    _run(tmp_path, "--plot", str(tmp_path / "plots"), "--modes", "emulate,trap")
    for name in ("exits_per_million.png", "model_cycles.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_and_modes(tmp_path):
    data, _ = _run(tmp_path, "--modes", "bt,emulate", "--max-instructions", "100")
    assert [r["mode"] for r in data["rows"]][:2] == ["emulate", "bt"]
    assert all(r["retired"] <= 100 and r["status"] == 124 for r in data["rows"])


@pytest.mark.parametrize("bad", [["--modes", "fast"], ["--cost", "x=1"], ["demo:nosuch"],
                                 ["--mem", "0"]])
def test_bad_input_is_one_line(tmp_path, capsys, bad):
    assert cli.main(["demo:hello", "-q", "--out", str(tmp_path / "o"), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bt-bench: error:")


def test_bad_option_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo:hello", "--max-instructions", "-5"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bt-bench: error:")


def test_progress_bar_plain_text():
    import io
    s = io.StringIO()
    p = bench.ProgressBar(stream=s, width=10)
    p(1, 2, "hello trap")
    p(2, 2, "done")
    lines = s.getvalue().splitlines()
    assert lines[0].startswith("[#####-----] 1/2") and lines[1].startswith("[##########] 2/2")


def test_markdown_table():
    rows = [bench.row_for("g", _Obs(), bench.costmodel.CostParams())]
    md = bench.format_table(rows, markdown=True).splitlines()
    assert md[0].startswith("| guest | mode |") and md[2].startswith("| g | trap |")


class _Obs:
    mode = "trap"
    retired = 1000
    exit_status = 0
    reason = "debug-exit"
    counters = {"exits": 3, "io_exits": 2, "cpuid_exits": 1}
    extra = {}
    wall = 0.5


def test_linux_is_the_guest_bt_run_boots_and_honours_the_budget(tmp_path, capsys):
    """`bt-bench linux` loads the cached guest as `bt-run linux` does (one shared
    definition: bt/images/linux_guest.py) and runs it under the budget."""
    from bt.cli.common import load_from_args
    from bt.cli.run import make_parser
    from bt.images.linux_guest import linux_available
    if not linux_available():
        pytest.skip("the Linux guest is not fetched (bt-images fetch linux)")
    (name, image), = cli._load_guests(["linux"], 64, linux_unpack=True)
    same = load_from_args(make_parser().parse_args(["linux", "--linux-unpack"]))
    assert name == "linux" and image.info == same.info and image.entry == same.entry
    assert [(s.addr, s.data) for s in image.segments] == [(s.addr, s.data) for s in same.segments]
    out = tmp_path / "out"
    assert cli.main(["linux", "--modes", "emulate,trap", "--max-instructions", "300000",
                     "--linux-unpack", "--jobs", "1", "-q", "--out", str(out)]) == 0
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [(r["guest"], r["mode"], r["status"], r["retired"]) for r in rows] == [
        ("linux", "emulate", 124, 300_000), ("linux", "trap", 124, 300_000)]
    assert "linux" in capsys.readouterr().out
