"""benchmarks/sanitized_runs.py: the C extensions under AddressSanitizer/UBSan (issue 18)."""
from __future__ import annotations

import subprocess

import pytest

from scripts import load_script


@pytest.mark.parametrize("stderr, returncode, expect", [
    ("==1==ERROR: AddressSanitizer: heap-use-after-free on address 0x6\nREAD of size 4\n", -6,
     "ERROR: AddressSanitizer: heap-use-after-free"),
    ("runtime/_clock.c:88:5: runtime error: shift exponent 40 is too large\n", 1, "runtime error: shift exponent"),
    ("", -11, "killed by signal 11"),
])
def test_sanitizer_reports_and_signals_are_problems(stderr, returncode, expect):
    mod = load_script("sanitized_runs")
    p = subprocess.CompletedProcess([], returncode, "", stderr)
    assert expect in mod.problem(p, "demo:hello --mode bt")


def test_a_guest_status_is_not_a_problem():
    mod = load_script("sanitized_runs")
    assert mod.problem(subprocess.CompletedProcess([], 125, "", "bt-run: unmapped access\n"), "x") is None


@pytest.mark.slow
def test_demos_and_stress_loop_clean_under_asan_and_ubsan(capsys):
    """Every demo in every mode and a short stress loop with the extensions built
    with -fsanitize=address,undefined: no report, no signal, no traceback.  (Its
    first run reported calibration's over-reads of the engine's memory, now read
    through /proc/self/mem in runtime/quirks.py.)"""
    assert load_script("sanitized_runs").main(["--processes", "12", "--in-process", "12", "--jobs", "2"]) == 0
    assert "problems: 0" in capsys.readouterr().out
