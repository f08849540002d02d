"""bt-run's --gdb options: bad input is status 2 before anything runs; a signal
to bt-run while gdb waits on a `continue` reaches gdb as an X packet."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from bt.cli.run import main
from gdbclient import Client


def test_option_errors_are_bad_input(capsys):
    assert main(["demo:hello", "--gdb-no-wait"]) == 2
    assert "--gdb-no-wait needs --gdb" in capsys.readouterr().err
    assert main(["demo:hello", "--gdb", "1234", "--compare", "bt"]) == 2
    assert main(["demo:hello", "--gdb", "nope"]) == 2
    assert "PORT must be a number" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo:hello", "--gdb", f"127.0.0.1:{port}"]) == 2
        assert "cannot listen" in capsys.readouterr().err


def test_sigint_while_gdb_waits_ends_the_run_with_an_x_packet():
    p = subprocess.Popen([sys.executable, "-m", "bt.cli.run", "demo:cpuloop", "--mode", "bt",
                          "--gdb", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = p.stderr.readline().decode()
    port = int(line.split("waiting for gdb on 127.0.0.1:")[1].split()[0])
    c = Client(port)
    assert c.cmd("?") == "S05"
    c.send("c")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    assert c.reply() == "X02"
    c.close()
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert b"bt-run: interrupted: stopped by SIGINT" in err
