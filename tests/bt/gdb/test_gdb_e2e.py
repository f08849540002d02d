"""bt-run --gdb with the real gdb in batch mode, in every mode (issue 20):
break at a demo's address, continue, stepi, info registers, x/4xb, continue to
the end.  The break is on hotflags' first `cli`: in bt its second hit is on a
jump-patched instruction (tests/bt/gdb/test_gdb_server.py checks the patch)."""
from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from gdbclient import demo_instruction
from gdbtool import ensure_gdb


@pytest.fixture(scope="module")
def gdb():
    return ensure_gdb()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_bt_run(mode: str, port: int):
    """bt-run waiting for gdb: returns once it says it listens."""
    cmd = [sys.executable, "-m", "bt.cli.run", "demo:hotflags", "--mode", mode,
           "--gdb", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stderr.readline().decode()
    assert "waiting for gdb on 127.0.0.1:%d" % port in first, first
    return proc


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_gdb_breaks_steps_reads_and_continues_to_the_end(gdb, mode):
    cli = demo_instruction("hotflags", "hf_loop", "cli")
    port = _free_port()
    proc = _start_bt_run(mode, port)
    cmds = ["set architecture i386", "set confirm off",
            f"target remote 127.0.0.1:{port}",
            f"break *{cli:#x}", "continue", "continue", "info registers",
            f"x/4xb {cli:#x}", "stepi", "stepi", "p/x $pc", "delete", "continue"]
    args = [gdb, "-nx", "-batch"]
    for c in cmds:
        args += ["-ex", c]
    gdb_run = subprocess.run(args, capture_output=True, text=True, timeout=180)
    out, err = proc.communicate(timeout=180)
    text = gdb_run.stdout + gdb_run.stderr
    assert text.count(f"Breakpoint 1, {cli:#010x}") == 2, text
    assert re.search(r"eip\s+0x%x\s" % cli, text), text
    assert re.search(r"eflags\s+0x[0-9a-f]+", text) and re.search(r"cs\s+0x8\s", text), text
    assert re.search(r"%#x:\s+0xfa\s+0x9c\s+0x58\s+0x25" % cli, text), text     # guest bytes
    assert f"{cli + 1:#010x} in ?? ()" in text and f"{cli + 2:#010x} in ?? ()" in text, text
    assert f"$1 = {cli + 2:#x}" in text, text
    assert "exited normally" in text, text
    assert proc.returncode == 0, err
    assert b"hotflags.flags_sum: 0x006a0cb8" in out
