"""The calibration cache (runtime/calcache.py): used only under its own key and
when the cached offsets pass their check; anything else falls back to full
calibration, which gives the same offsets; runs are identical either way."""
import json
import os
import subprocess
import sys

import pytest

from runtime import calcache, quirks, softtlb, tbgen

# (part, calibration, dataclass, check) as each module wires them.
QUIRKS = ("quirks", quirks._calibrate_all, quirks.Offsets, quirks._verify_offsets)
TBGEN = ("tbgen", tbgen._calibrate, tbgen.TBGen, tbgen._verify)
SOFTTLB = ("softtlb", softtlb._calibrate, softtlb.TLBLayout, softtlb._verify)


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("BT_CALIBRATION_CACHE", raising=False)
    return tmp_path / "bt"


def _load(part):
    value = calcache.cached(*part)
    return value, calcache.SOURCE[part[0]]


def _entries(path):
    return json.loads(path.read_text())["parts"]


@pytest.mark.parametrize("part", [QUIRKS, TBGEN, SOFTTLB], ids=lambda p: p[0])
def test_second_load_comes_from_the_cache_with_the_same_result(cache_home, part):
    first, src1 = _load(part)
    second, src2 = _load(part)
    assert (src1, src2) == ("calibrated", "cache")
    assert second == first
    assert calcache.cache_file().parent == cache_home
    assert [p.name for p in cache_home.iterdir()] == [calcache.cache_file().name]   # no temp file left


def test_a_corrupt_file_falls_back_to_calibration(cache_home):
    truth, _ = _load(QUIRKS)
    calcache.cache_file().write_text("{not json")
    value, src = _load(QUIRKS)
    assert (value, src) == (truth, "calibrated")
    assert _load(QUIRKS) == (truth, "cache")                 # and the file is whole again


@pytest.mark.parametrize("field, wrong", [("eip", 8), ("pc_sync_flag", 1), ("recur_mem", 4),
                                          ("hook_range", None), ("cc_op", 4), ("env_links", None)])
def test_a_stale_offset_fails_its_check_and_is_calibrated_again(cache_home, field, wrong):
    truth, _ = _load(QUIRKS)
    path = calcache.cache_file()
    data = json.loads(path.read_text())
    entry = data["parts"]["quirks"]
    if field == "hook_range":
        entry[field] = [entry[field][0] + 8, entry[field][1] + 8]
    elif field == "env_links":
        entry[field] = [[link + 8, delta] for link, delta in entry[field]]
    else:
        entry[field] += wrong
    path.write_text(json.dumps(data))
    assert _load(QUIRKS) == (truth, "calibrated")
    assert _entries(path)["quirks"][field] == json.loads(json.dumps(getattr(truth, field)))


@pytest.mark.parametrize("part, field", [(TBGEN, "invalidated"), (TBGEN, "link"), (SOFTTLB, "fast"),
                                         (SOFTTLB, "addend")], ids=lambda p: p if isinstance(p, str) else p[0])
def test_stale_counters_and_tlb_layouts_are_calibrated_again(cache_home, part, field):
    truth, _ = _load(part)
    path = calcache.cache_file()
    data = json.loads(path.read_text())
    data["parts"][part[0]][field] += 8
    path.write_text(json.dumps(data))
    assert _load(part) == (truth, "calibrated")


def test_wrong_fields_fall_back(cache_home):
    truth, _ = _load(QUIRKS)
    path = calcache.cache_file()
    data = json.loads(path.read_text())
    data["parts"]["quirks"] = {"eip": "168"}
    path.write_text(json.dumps(data))
    assert _load(QUIRKS) == (truth, "calibrated")


def test_an_entry_under_another_key_is_not_used(cache_home, monkeypatch):
    truth, _ = _load(QUIRKS)
    path = calcache.cache_file()
    # The same file name but a key that differs (as if the library changed
    # under a colliding name): never read.
    data = json.loads(path.read_text())
    data["key"]["mtime_ns"] += 1
    path.write_text(json.dumps(data))
    assert _load(QUIRKS) == (truth, "calibrated")
    # A changed key names another file: the old one is not read either.
    other = dict(calcache.key(), size=calcache.key()["size"] + 1)
    assert calcache.cache_file(other) != calcache.cache_file()
    monkeypatch.setattr(calcache, "key", lambda: other)
    assert _load(QUIRKS) == (truth, "calibrated")


def test_the_key_follows_the_library_and_the_calibration_code():
    k = calcache.key()
    from unicorn.unicorn_py3.unicorn import uclib
    st = os.stat(os.path.realpath(uclib._name))
    assert (k["size"], k["mtime_ns"], k["inode"]) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert k["python"] == sys.version
    for rel in calcache.CODE:
        assert (calcache._ROOT / rel).is_file(), rel


def test_the_cache_can_be_turned_off(cache_home, monkeypatch):
    monkeypatch.setenv("BT_CALIBRATION_CACHE", "off")
    _load(QUIRKS)
    assert _load(QUIRKS)[1] == "calibrated"
    assert not cache_home.exists()


def test_an_unwritable_cache_dir_still_calibrates(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))      # bt/ cannot be made under a file
    monkeypatch.delenv("BT_CALIBRATION_CACHE", raising=False)
    value, src = _load(QUIRKS)
    assert src == "calibrated" and value.eip >= 0


def _report(tmp_path, name, env, mode):
    out = tmp_path / f"{name}.json"
    subprocess.run([sys.executable, "-m", "bt.cli.run", "demo:hello", "--mode", mode, "-q",
                    "--report", str(out)], env=env, check=True, capture_output=True)
    report = json.loads(out.read_text())
    for timing in ("wall_time_seconds", "vmm_time_seconds", "guest_time_share"):
        report.pop(timing)
    return report


@pytest.mark.parametrize("mode", ["emulate", "bt"])
def test_a_run_is_identical_with_and_without_the_cache(tmp_path, mode):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("BT_CALIBRATION_CACHE", None)
    off = _report(tmp_path, "off", dict(env, BT_CALIBRATION_CACHE="off"), mode)
    filled = _report(tmp_path, "fill", env, mode)           # calibrates and writes
    path, = (tmp_path / "cache" / "bt").glob("calibration-*.json")
    # every mode's clock uses all three parts (fast stores and blocks known
    # unchanged in every mode)
    assert sorted(_entries(path)) == ["quirks", "softtlb", "tbgen"]
    written = path.stat().st_mtime_ns
    cached = _report(tmp_path, "cached", env, mode)         # reads every part ...
    assert path.stat().st_mtime_ns == written               # ... and calibrates none
    assert off == filled == cached


def test_an_edit_to_calibration_code_changes_the_key(tmp_path, monkeypatch):
    original = calcache.key()
    for rel in calcache.CODE:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((calcache._ROOT / rel).read_bytes())
    monkeypatch.setattr(calcache, "_ROOT", tmp_path)
    calcache.key.cache_clear()
    try:
        same = calcache.key()
        calcache.key.cache_clear()
        with open(tmp_path / "runtime/tbgen.py", "a") as f:
            f.write("\n# an edit\n")
        edited = calcache.key()
    finally:
        calcache.key.cache_clear()
    assert same == original                  # a copy of the same code: the same key
    assert edited != same and calcache.cache_file(edited) != calcache.cache_file(same)
