"""benchmarks/fuzz_campaign.py: its summary, its shrunk reproducers, its CLI errors."""
from __future__ import annotations

import io
import subprocess
import sys

from scripts import load_script, script_path

SCRIPT = script_path("fuzz_campaign")


def _module():
    return load_script("fuzz_campaign")


def test_campaign_counts_divergences_and_shrinks_them():
    out = io.StringIO()
    # Under trap every program diverges: the guest frame's own EFLAGS readout
    # shows the host's IF (trap-and-emulate's permanent leak), so the shrinker
    # takes each down to the frame alone, whatever its statements were.
    s = _module().campaign(3, 7, features=["alu"], statements=3, mode="trap", do_shrink=True,
                           max_shrunk=1, out=out)
    assert s["programs"] == 3 and s["divergent"] == 3 and s["by_feature"] == {"alu": 3}
    (_, _, small, diff), = s["shrunk"]
    assert small.stmts == [] and diff.guest_visible
    text = out.getvalue()
    assert "programs: 3  divergent (guest-visible): 3" in text and "shrunk to 0 statement(s)" in text


def test_campaign_on_agreeing_features_is_clean_and_deterministic():
    mod = _module()
    a = mod.campaign(3, 5, features=["alu", "cpuid", "int"], out=io.StringIO())
    b = mod.campaign(3, 5, features=["alu", "cpuid", "int"], out=io.StringIO())
    assert a["divergent"] == 0 and a["unfinished"] == 0
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_cli_bad_input_is_one_line():
    r = subprocess.run([sys.executable, str(SCRIPT), "--features", "bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown fuzz feature 'bogus'")
    assert len(r.stderr.strip().splitlines()) == 1
