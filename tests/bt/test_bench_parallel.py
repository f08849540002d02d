"""bt-bench across processes and clusters (--jobs, --scheduler) and sweep
dimensions (--sweep): the table must not depend on where a run ran."""
from __future__ import annotations

import csv
import json
import operator
import os
import signal
import sys

import pytest

from bt.cli import bench as cli
from bt.errors import BadInput
from bt.machine import MachineConfig
from bt.measure import bench, executors
from bt.measure.sweep import Sweep

# probe-segments first: it takes longer than hello, so with two workers hello's
# task ends first and must wait for its turn (rows come back in matrix order).
GUESTS = ["demo:probe-segments", "demo:hello", "demo:smc"]
TIMER = ["demo:timer", "--modes", "emulate,bt", "--max-instructions", "1000000"]


def _bench(tmp_path, capsys, name, *args):
    out = tmp_path / name
    assert cli.main([*args, "--mem", "8", "-q", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    with open(out / "bench.csv") as f:
        csv_rows = list(csv.DictReader(f))
    return json.loads((out / "bench.json").read_text()), csv_rows, table


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in bench.NONDETERMINISTIC} for r in rows]


def _table_cells(table: str, swept: int = 0):
    """The printed table's data lines as cells, minus wall s and MIPS (every cell
    before them is non-empty, so whitespace splitting finds them by position)."""
    wall = 12 + swept
    return [c[:wall] + c[wall + 2:] for c in (line.split() for line in table.splitlines()[2:])]


def _same_table(a, b, swept: int = 0):
    (ja, ca, ta), (jb, cb, tb) = a, b
    assert _strip(ja["rows"]) == _strip(jb["rows"])
    assert _strip(ca) == _strip(cb)
    assert _table_cells(ta, swept) == _table_cells(tb, swept)
    assert len(ja["rows"]) == len(_table_cells(ta, swept))


def test_jobs_2_gives_the_table_of_jobs_1(tmp_path, capsys):
    one = _bench(tmp_path, capsys, "one", *GUESTS, "--jobs", "1")
    two = _bench(tmp_path, capsys, "two", *GUESTS, "--jobs", "2")
    _same_table(one, two)
    assert [r["guest"] for r in two[0]["rows"]][::3] == ["probe-segments", "hello", "smc"]
    assert one[0]["meta"]["executor"] == "this process"
    assert two[0]["meta"]["executor"] == "2 local worker processes"


def test_a_cluster_gives_the_table_of_jobs_1(tmp_path, capsys):
    """A Dask LocalCluster (two worker processes): by address through the CLI,
    and by Client through run_matrix."""
    distributed = pytest.importorskip("distributed")   # the test extra installs it
    one = _bench(tmp_path, capsys, "one", *GUESTS, "--jobs", "1")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        dask = _bench(tmp_path, capsys, "dask", *GUESTS, "--scheduler", cluster.scheduler_address)
        with distributed.Client(cluster) as client:
            from bt.images import load_image
            guests = [(g[5:], load_image(g, mem_bytes=8 << 20)) for g in GUESTS]
            rows = bench.run_matrix(guests, MachineConfig(mem_mib=8), executor=client)
            assert not client.status == "closed"          # the caller's client stays open
    _same_table(one, dask)
    assert dask[0]["meta"]["executor"].startswith("dask scheduler tcp://")
    assert _strip(json.loads(json.dumps(rows))) == _strip(one[0]["rows"])


def test_sweep_columns_and_rows(tmp_path, capsys):
    data, csv_rows, table = _bench(tmp_path, capsys, "s", *TIMER, "demo:hello",
                                   "--sweep", "cpu_mhz=50,200", "--sweep", "vmexit=1000,4000",
                                   "--jobs", "2")
    rows = data["rows"]
    assert [(r["guest"], r["cpu_mhz"], r["vmexit"], r["mode"]) for r in rows] == [
        (g, c, v, m) for g in ("timer", "hello") for c in (50, 200) for v in (1000.0, 4000.0)
        for m in ("emulate", "bt")]
    assert data["meta"]["sweep"] == {"cpu_mhz": [50, 200], "vmexit": [1000.0, 4000.0]}
    assert list(csv_rows[0])[:4] == ["guest", "cpu_mhz", "vmexit", "mode"]
    head = table.splitlines()[0].split()
    assert head[:4] == ["guest", "cpu_mhz", "vmexit", "mode"]
    assert _table_cells(table, 2)[0][:4] == ["timer", "50", "1000", "emulate"]
    # cpu_mhz changes the run (timer interrupts per instruction): each point is
    # the run --cpu-mhz gives; a cost parameter only reprices the same run.
    for mhz in (50, 200):
        alone, _, _ = _bench(tmp_path, capsys, f"c{mhz}", *TIMER, "--cpu-mhz", str(mhz),
                             "--cost", "vmexit=4000", "--jobs", "1")
        swept = [{k: v for k, v in r.items() if k not in ("cpu_mhz", "vmexit")}
                 for r in rows if r["guest"] == "timer" and r["cpu_mhz"] == mhz
                 and r["vmexit"] == 4000.0]
        assert _strip(swept) == _strip(alone["rows"])
    timer = {(r["cpu_mhz"], r["mode"]): r["interrupts_injected"] for r in rows
             if r["guest"] == "timer"}
    assert timer[(50, "emulate")] != timer[(200, "emulate")]


def test_a_cost_sweep_prices_one_run(tmp_path, capsys):
    """vtx_model_cycles follows vmexit; the counted figures are the same run's."""
    data, _, _ = _bench(tmp_path, capsys, "v", "demo:probe-segments", "--modes", "emulate,trap",
                        "--sweep", "vmexit=0,2000", "--jobs", "1")
    trap = [r for r in data["rows"] if r["mode"] == "trap"]
    assert trap[0]["vtx_model_cycles"] < trap[1]["vtx_model_cycles"]
    assert trap[0]["retired"] == trap[1]["retired"] and trap[0]["exits"] == trap[1]["exits"]
    assert trap[0]["wall_s"] == trap[1]["wall_s"]          # literally one run


@pytest.mark.parametrize("bad", [
    ["--sweep", "cpu_mhz"], ["--sweep", "cpu_mhz="], ["--sweep", "cpu_mhz=50,,100"],
    ["--sweep", "cpu_mhz=0"], ["--sweep", "cpu_mhz=1.5"], ["--sweep", "vmexit=-1"],
    ["--sweep", "vmexit=nan"], ["--sweep", "nosuch=1,2"], ["--sweep", "vmexit=1,1"],
    ["--sweep", "vmexit=1", "--sweep", "vmexit=2"], ["--sweep", "vmexit=1", "--cost", "vmexit=2"],
    ["--sweep", "cpu_mhz=10", "--cpu-mhz", "20"], ["--jobs", "2", "--scheduler", "tcp://x:1"]])
def test_bad_sweep_and_executor_input_is_one_line(tmp_path, capsys, bad):
    assert cli.main(["demo:hello", "-q", "--out", str(tmp_path / "o"), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bt-bench: error:"), err


def test_jobs_zero_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo:hello", "--jobs", "0"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_scheduler_without_dask_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)     # import distributed fails
    assert cli.main(["demo:hello", "-q", "--out", str(tmp_path / "o"),
                     "--scheduler", "tcp://127.0.0.1:8786"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bt-bench: error: --scheduler needs dask.distributed: "
                   "pip install -e '.[dask]'"]


def test_unreachable_scheduler_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    import socket
    with socket.socket() as s:                 # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", "2s")
    assert cli.main(["demo:hello", "-q", "--out", str(tmp_path / "o"),
                     "--scheduler", f"tcp://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bt-bench: error: --scheduler tcp://"), err


def test_executor_choice():
    assert executors.make(None, 5) is None and executors.make(1, 5) is None
    assert executors.make(4, 2).jobs == 2                 # never more workers than tasks
    assert executors.make(4, 1) is None                   # one task: no pool
    with pytest.raises(BadInput):
        executors.make(0, 3)


def test_a_failing_task_is_a_worker_error():
    """A task that raises in a worker process ends the matrix with WorkerError
    naming the exception (and the workers are gone)."""
    pool = executors.LocalProcesses(2)
    with pytest.raises(executors.WorkerError, match="ZeroDivisionError"):
        list(pool.run(operator.truediv, [(1, 0), (2, 1)]))


def test_sweep_points_order():
    s = Sweep.parse(["vmexit=1,2", "cpu_mhz=10,20"])
    assert s.points() == [{"vmexit": 1.0, "cpu_mhz": 10}, {"vmexit": 1.0, "cpu_mhz": 20},
                          {"vmexit": 2.0, "cpu_mhz": 10}, {"vmexit": 2.0, "cpu_mhz": 20}]
    assert s.machine_points() == [{"cpu_mhz": 10}, {"cpu_mhz": 20}]
    assert Sweep.parse([]).points() == [{}]


def _die(task, image):
    """A task whose worker is killed under it (spawned workers import this module
    by name: multiprocessing passes them the parent's sys.path)."""
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_that_dies_is_a_worker_error():
    """A worker killed under a task does not leave the command waiting for rows."""
    pool = executors.LocalProcesses(2)
    with pytest.raises(executors.WorkerError, match="died .exit code -9"):
        list(pool.run(_die, [(1, None), (2, None)]))
