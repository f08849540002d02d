"""The real gdb for the end-to-end test: found, or installed the way the project
gets its Linux guest (Debian's package through apt, retried once after an
`apt-get update`: bt/images/fetch.py), or the test fails saying how to get it.
Never a silent skip."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

PACKAGE = "gdb"


def _apt(*args: str) -> str:
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True)
    if done.returncode == 0:
        return ""
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("E:")] or done.stderr.splitlines()
    return f"apt-get {' '.join(args)} failed (exit {done.returncode}): {(lines or [''])[-1].strip()}"


def ensure_gdb() -> str:
    found = shutil.which("gdb")
    if found:
        return found
    how = f"install Debian's {PACKAGE} package (sudo apt-get install {PACKAGE})"
    if shutil.which("apt-get") is None:
        pytest.fail(f"gdb is needed by the end-to-end test of bt-run --gdb and apt-get is missing: {how}")
    if os.geteuid() != 0:
        pytest.fail(f"gdb is needed by the end-to-end test of bt-run --gdb: {how} (not root here)")
    error = _apt("install", "-y", "--no-install-recommends", PACKAGE)
    if error:                       # stale package lists on a fresh machine: update, retry once
        _apt("update")
        error = _apt("install", "-y", "--no-install-recommends", PACKAGE)
    found = shutil.which("gdb")
    if not found:
        pytest.fail(f"could not install gdb for the end-to-end test of bt-run --gdb: {error or 'no gdb after install'}; {how}")
    return found
