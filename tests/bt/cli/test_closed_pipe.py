"""`bt-scan ... | head` and friends: a reader that goes away ends the command
quietly (exit 141, as SIGPIPE would), never with a traceback."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv", [
    ["bt.cli.scan", "demo:probe-flags", "--sites"],
    ["bt.cli.run", "demo:hello"],
])
def test_output_to_a_closed_pipe_ends_quietly(argv):
    p = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()                  # the reader is gone before the command writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err
