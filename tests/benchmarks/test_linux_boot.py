"""benchmarks/linux_boot.py: the modes side by side in one run (issue 17).

The verdict arithmetic on made-up runs, and one real run of Debian's kernel on a
small budget (the first 600,000 instructions: before the marker, so the marker
columns are empty and the CPU ratio falls back to the whole run)."""
import json

from scripts import load_script

lb = load_script("linux_boot")


def fake(mode, cpu, exits, io, step=1000, points=3, to_init=None):
    return {"mode": mode, "cpu_to_init_s": to_init, "wall_to_init_s": to_init, "cpu_total_s": cpu,
            "wall_total_s": cpu * 2,
            "timeline": [{"retired": k * step, "exits": exits * k, "io_exits": io * k}
                         for k in range(points + 1)]}


def test_targets_compare_cpu_and_virtualization_exits_over_a_common_budget():
    best = {"emulate": fake("emulate", 2.0, 10, 10, to_init=1.0),
            "trap": fake("trap", 3.0, 1000, 10, points=5),
            "bt": fake("bt", 2.5, 15, 10, points=3, to_init=1.4)}
    cpu, exits = lb.targets(best)
    assert cpu["ratio"] == 1.4 and cpu["met"] and "to the /init marker" in cpu["figure"]
    # trap went further: the common budget is bt's last point, 3,000 instructions
    assert exits["budget"] == 3000
    assert exits["value"] == "15 / 2,970 = 0.51%" and exits["met"]
    best["bt"] = fake("bt", 4.0, 100, 10)            # no marker: whole-run CPU, 2x
    cpu, exits = lb.targets(best)
    assert cpu["ratio"] == 2.0 and not cpu["met"] and "whole run" in cpu["figure"]
    assert not exits["met"]
    assert lb.targets({"emulate": best["emulate"]}) == []      # nothing to compare


def test_a_small_budget_under_every_mode_gives_one_table(tmp_path, capsys):
    out = tmp_path / "run.json"
    status = lb.main(["--modes", "bt,emulate", "--repeat", "2", "--max-instructions", "600000",
                      "--sample-every", "200000", "--linux-unpack", "--json", str(out)])
    text = capsys.readouterr().out
    assert status == 0
    doc = json.loads(out.read_text())
    assert doc["modes"] == ["bt", "emulate"] and doc["deterministic"]
    assert [r["mode"] for r in doc["runs"]] == ["bt", "emulate", "bt", "emulate"]   # alternated
    for r in doc["runs"]:
        assert r["exit_status"] == 124 and r["retired_instructions"] == 600_000
        assert [p["retired"] for p in r["timeline"]] == [0, 200_000, 400_000, 600_000]
        assert r["cpu_total_s"] > 0 and r["instructions_to_init"] is None
    bt_run = doc["runs"][0]
    assert bt_run["scans"] > 0 and bt_run["patches_installed"] > 0
    header = next(ln for ln in text.splitlines() if ln.startswith("figure"))
    assert header.split() == ["figure", "bt", "emulate"]
    assert "target: bt / emulate CPU whole run (no marker) <= 1.5x" in text
    assert "identical serial output and counts across 2 run(s) per mode: bt yes, emulate yes" in text


def test_the_one_mode_form_still_writes_its_json(tmp_path, capsys):
    out = tmp_path / "one.json"
    assert lb.main(["--mode", "emulate", "--repeat", "1", "--max-instructions", "300000",
                    "--linux-unpack", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["mode"] == "emulate" and len(doc["runs"]) == 1 and "deterministic" in doc
    assert "target:" not in capsys.readouterr().out        # one mode: nothing to compare


def test_modes_are_checked_before_anything_runs():
    import pytest
    assert lb.parse_modes("bt, trap") == ["bt", "trap"]
    for bad in ("emulate,foo", "bt,bt", ","):
        with pytest.raises(SystemExit):
            lb.parse_modes(bad)


def test_the_sink_notes_the_kernels_first_message_and_the_marker_apart():
    """The decompressor's part of a boot is what comes before the kernel's first
    message: the sink notes the instruction count at each marker, split or not
    across writes."""
    class FakeVM:
        t = 0

        def now(self):
            return self.t

    sink = lb.MarkerClock()
    sink.vm = vm = FakeVM()
    vm.t = 100
    sink.write(b"Decompressing Linux... done.\nBooting the kernel.\n")
    assert sink.at_kernel is None
    vm.t = 200
    sink.write(b"[    0.000000] Linux ver")
    vm.t = 300
    sink.write(b"sion 6.1.0-50-686\n")
    assert sink.at_kernel[2] == 300 and sink.at is None
    vm.t = 400
    sink.write(b"[    0.000001] more\n" + lb.MARKER + b"\n")
    assert sink.at[2] == 400 and sink.at_kernel[2] == 300
