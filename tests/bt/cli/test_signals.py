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


def _children(pid: int) -> list[int]:
    """The live child processes of `pid` (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid:
                out.append(int(d))
    return out


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_bt_bench_keeping_the_rows_done(tmp_path, sig, jobs):
    """In this process (--jobs 1) and with worker processes (--jobs 2, one guest
    each): the rows done are written and printed, no traceback, and no worker
    outlives the command."""
    spin = tmp_path / "spin.elf"
    spin.write_bytes(elf32([(LOAD, LOAD, assemble(LOOP), 0x1000)], LOAD))
    out_dir = tmp_path / "out"
    p = _start(["bt.cli.bench", "demo:hello", str(spin), "--modes", "emulate,bt",
                "--out", str(out_dir), "--jobs", jobs], tmp_path)
    # The rows of demo:hello end first; the spinning guest never does.  The
    # progress bar (one stderr line per step when stderr is not a terminal) says
    # when hello's rows are done (with workers the spinning guest runs
    # meanwhile; in this process it starts next): signal then, not after a
    # fixed time (a loaded machine made that flaky).
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
    workers = _children(p.pid)
    assert len(workers) >= (2 if jobs == "2" else 0), workers
    p.send_signal(sig)
    out, err = p.communicate(timeout=90)
    out, err = out.decode(), seen.decode() + err.decode()
    assert p.returncode == STATUS[sig], err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert f"bt-bench: interrupted by {signal.Signals(sig).name}: 2 of 4 rows done" in err
    doc = json.loads((out_dir / "bench.json").read_text())
    assert [(r["guest"], r["mode"]) for r in doc["rows"]] == [("hello", "emulate"), ("hello", "bt")]
    assert doc["meta"]["interrupted"] == signal.Signals(sig).name
    assert "hello" in out and "spin" not in out
    deadline = time.monotonic() + 10
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if _running(w)], "worker processes outlived bt-bench"


def test_ctrl_c_at_a_terminal_stops_bt_bench_and_its_workers(tmp_path):
    """Ctrl-C at a terminal signals the whole process group: the workers stop
    their runs themselves, the command keeps hello's rows, nothing is left."""
    spin = tmp_path / "spin.elf"
    spin.write_bytes(elf32([(LOAD, LOAD, assemble(LOOP), 0x1000)], LOAD))
    out_dir = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "bt.cli.bench", "demo:hello", str(spin),
                          "--modes", "emulate,bt", "--out", str(out_dir), "--jobs", "2"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    seen = b""
    while b"2/4" not in seen and p.poll() is None:
        seen += p.stderr.readline()
    time.sleep(0.5)
    workers = _children(p.pid)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=90)
    err = seen.decode() + err.decode()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "bt-bench: interrupted by SIGINT: 2 of 4 rows done" in err
    deadline = time.monotonic() + 10
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) >= 2 and not [w for w in workers if _running(w)]


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
