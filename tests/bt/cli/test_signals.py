"""Ctrl-C and SIGTERM stop a run cleanly (bt/interrupt.py): a real subprocess,
a guest that loops forever, a signal once the guest has printed; the run ends
with reason `interrupted`, its report and summary, and 128 + the signal."""
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from pathlib import Path

from bt.outcome import Outcome
from conftest import LOAD, assemble, raw_guest, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "images"))
from images_testkit import elf32  # noqa: E402  (the image builders of tests/bt/images)

# Print "R\n" on COM1 (the test waits for it: the run has started), then spin.
LOOP = "mov dx, 0x3f8; mov al, 0x52; out dx, al; mov al, 10; out dx, al; spin: jmp spin"
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _start(argv, cwd):
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_for_output(p, marker: bytes):
    line = p.stdout.readline()
    assert marker in line, (line, p.stderr.read() if p.poll() is not None else "")


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_bt_run_with_its_report(tmp_path, mode, sig):
    img = tmp_path / "loop.bin"
    img.write_bytes(assemble(LOOP))
    report = tmp_path / "r.json"
    p = _start(["bt.cli.run", str(img), "--format", "raw", "--load", hex(LOAD), "--mode", mode,
                "--report", str(report)], tmp_path)
    _wait_for_output(p, b"R")
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    err = err.decode()
    assert p.returncode == STATUS[sig], err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "vmm-error" not in err, err
    name = signal.Signals(sig).name
    assert f"bt-run: interrupted: stopped by {name}" in err
    assert f"bt-run: interrupted (status {STATUS[sig]});" in err       # the usual summary
    rep = json.loads(report.read_text())
    assert rep["reason"] == "interrupted" and rep["exit_status"] == STATUS[sig]
    assert rep["message"] == f"stopped by {name}"
    assert rep["serial_output"] == "R\n"
    assert rep["retired_instructions"] > 4 and rep["counters"]["slices"] >= 1


def test_a_signal_while_loading_is_one_line(tmp_path):
    """Before any run (here: blocked reading --serial-input from a FIFO) a stop
    signal ends the command with one line and 128 + signal, no traceback."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    img = tmp_path / "loop.bin"
    img.write_bytes(assemble(LOOP))
    p = _start(["bt.cli.run", str(img), "--format", "raw", "--load", hex(LOAD),
                "--serial-input", str(fifo)], tmp_path)
    fd = os.open(fifo, os.O_WRONLY)        # returns once bt-run has opened it for reading
    try:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        os.close(fd)
    assert p.returncode == 143
    assert err.decode() == "bt-run: interrupted by SIGTERM\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_bt_bench_keeping_the_rows_done(tmp_path, sig):
    spin = tmp_path / "spin.elf"
    spin.write_bytes(elf32([(LOAD, LOAD, assemble(LOOP), 0x1000)], LOAD))
    out_dir = tmp_path / "out"
    p = _start(["bt.cli.bench", "demo:hello", str(spin), "--modes", "emulate,bt",
                "--out", str(out_dir)], tmp_path)
    # The rows of demo:hello come first; the spinning guest then never ends.
    # The progress bar (one stderr line per step when stderr is not a terminal)
    # says when the spinning guest's first run has started: signal then, not
    # after a fixed time (a loaded machine made that flaky).
    seen = b""
    deadline = time.monotonic() + 120
    while b"2/4" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([p.stderr], [], [], 1.0)
        if ready:
            line = p.stderr.readline()
            if not line:
                break
            seen += line
    assert b"2/4" in seen and p.poll() is None, seen
    time.sleep(0.5)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    out, err = out.decode(), seen.decode() + err.decode()
    assert p.returncode == STATUS[sig], err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "vmm-error" not in err, err
    name = signal.Signals(sig).name
    assert f"bt-run: interrupted: stopped by {name}" in err
    assert f"bt-run: interrupted (status {STATUS[sig]});" in err       # the usual summary
    rep = json.loads(report.read_text())
    assert rep["reason"] == "interrupted" and rep["exit_status"] == STATUS[sig]
    assert rep["message"] == f"stopped by {name}"
    assert rep["serial_output"] == "R\n"
    assert rep["retired_instructions"] > 4 and rep["counters"]["slices"] >= 1


def test_a_signal_while_loading_is_one_line(tmp_path):
    """Before any run (here: blocked reading --serial-input from a FIFO) a stop
    signal ends the command with one line and 128 + signal, no traceback."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    img = tmp_path / "loop.bin"
    img.write_bytes(assemble(LOOP))
    p = _start(["bt.cli.run", str(img), "--format", "raw", "--load", hex(LOAD),
                "--serial-input", str(fifo)], tmp_path)
    fd = os.open(fifo, os.O_WRONLY)        # returns once bt-run has opened it for reading
    try:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        os.close(fd)
    assert p.returncode == 143
    assert err.decode() == "bt-run: interrupted by SIGTERM\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_bt_bench_keeping_the_rows_done(tmp_path, sig):
    spin = tmp_path / "spin.elf"
    spin.write_bytes(elf32([(LOAD, LOAD, assemble(LOOP), 0x1000)], LOAD))
    out_dir = tmp_path / "out"
    p = _start(["bt.cli.bench", "demo:hello", str(spin), "--modes", "emulate,bt",
                "--out", str(out_dir), "-q"], tmp_path)
    # The rows of demo:hello come first; the spinning guest then never ends.
    # No serial output reaches bench's stdout, so wait for the spinning guest's
    # emulate run by its CPU time: demo:hello takes well under a second.
    try:
        p.wait(timeout=6)
    except subprocess.TimeoutExpired:
        pass
    assert p.poll() is None, p.stderr.read()
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    out, err = out.decode(), err.decode()
    assert p.returncode == STATUS[sig], err
    assert "Traceback" not in err, err
    assert f"bt-bench: interrupted by {signal.Signals(sig).name}: 2 of 4 runs done" in err
    doc = json.loads((out_dir / "bench.json").read_text())
    assert [(r["guest"], r["mode"]) for r in doc["rows"]] == [("hello", "emulate"), ("hello", "bt")]
    assert doc["meta"]["interrupted"] == signal.Signals(sig).name
    assert "hello" in out and "spin" not in out


def test_ctrl_c_in_the_python_api_ends_the_run_with_a_result():
    """No command installed a handler (a notebook): Ctrl-C during `VM.run` still
    ends the run as `interrupted` instead of raising through Unicorn's callbacks."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        _, res = run(raw_guest(LOOP))
    finally:
        timer.cancel()
    assert res.reason is Outcome.INTERRUPTED and res.exit_status == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler     # put back
