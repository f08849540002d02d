"""Where the tasks of a `bt-bench` matrix run: local worker processes
(`--jobs N`) or a Dask distributed cluster (`--scheduler ADDRESS`).

A task is one guest at one machine setting with all its modes
(bt/measure/bench.py `guest_rows`), so the emulate reference run and its RAM
stay in the process that compares against them; only rows travel back.
`run(fn, tasks)` yields `(index, rows)` as tasks end, in any order; the caller
puts rows back in matrix order.  Runs are deterministic, so where a task ran
changes nothing but wall time.

Stopping (Ctrl-C, SIGTERM; bt/interrupt.py): the command raises `Interrupted`
in its main thread while it waits here; leaving `run` then stops the workers.
Local workers get SIGTERM, which ends their current run at its next slice
boundary (`interrupt.install_worker_handlers`), and are joined, so no process
outlives the command; one that does not end within `STOP_GRACE` seconds is
killed.  A worker also gets SIGTERM from the kernel if the command itself dies
(Linux PR_SET_PDEATHSIG).  Dask cannot stop a task that has started: its
futures are cancelled and runs already going finish on the cluster unseen.
"""
from __future__ import annotations

import ctypes
import os
import queue
import signal
import threading
import traceback
from contextlib import contextmanager

from bt import interrupt
from bt.errors import BadInput

CONNECT_TIMEOUT = "10s"  # to reach a Dask scheduler
STOP_GRACE = 20.0      # seconds a stopped worker gets to end its run before SIGKILL
_POLL = 0.2            # seconds between checks for a stop or a dead worker


class WorkerError(Exception):
    """A task failed in a worker (a bug: guest faults are outcomes, not exceptions)."""


def default_jobs() -> int:
    """The cores this process may use (the `--jobs` default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))       # PR_SET_PDEATHSIG
    except (OSError, AttributeError):            # not Linux: the getppid poll remains
        pass


def _worker_main(fn, tasks, results, parent: int) -> None:
    """A worker process: run tasks until a None, a stop signal, or the parent is gone."""
    interrupt.install_worker_handlers()
    _die_with_parent()
    while interrupt.pending() is None and os.getppid() == parent:
        try:
            item = tasks.get(timeout=_POLL)
        except queue.Empty:
            continue
        if item is None:
            return
        index, task, image = item
        try:
            results.put((index, "ok", fn(task, image)))
        except interrupt.Interrupted as e:          # (not picklable: sent as fields)
            results.put((index, "interrupted", (e.signum, getattr(e, "rows", []))))
            return
        except Exception:
            results.put((index, "error", traceback.format_exc()))


@contextmanager
def _sigint_ignored():
    """Spawned children inherit an ignored SIGINT across exec, so a Ctrl-C while
    one is still importing cannot print a KeyboardInterrupt traceback; the
    worker installs its own handlers once it runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class LocalProcesses:
    """`jobs` worker processes on this machine (multiprocessing, spawn: a fresh
    interpreter each, no Unicorn state inherited by fork)."""

    def __init__(self, jobs: int):
        self.jobs = jobs

    def describe(self) -> str:
        return f"{self.jobs} local worker processes"

    def run(self, fn, tasks: list[tuple]):
        """tasks: (task, image) pairs."""
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        todo, results = ctx.Queue(), ctx.Queue()
        n = min(self.jobs, len(tasks))
        procs = [ctx.Process(target=_worker_main, args=(fn, todo, results, os.getpid()),
                             daemon=True, name=f"bt-bench-worker-{i}") for i in range(n)]
        queued = 0

        def feed(k: int) -> None:            # a few tasks ahead, not every image at once
            nonlocal queued
            for _ in range(k):
                if queued < len(tasks):
                    todo.put((queued, *tasks[queued]))
                    queued += 1
                    if queued == len(tasks):
                        for _ in procs:
                            todo.put(None)
        try:
            with _sigint_ignored():
                for p in procs:
                    p.start()
            feed(2 * n)
            left = len(tasks)
            while left:
                try:
                    index, kind, value = results.get(timeout=_POLL)
                except queue.Empty:
                    dead = [p for p in procs if p.exitcode not in (None, 0)]
                    if dead:
                        raise WorkerError(f"worker process {dead[0].name} died "
                                          f"(exit code {dead[0].exitcode})") from None
                    if not any(p.is_alive() for p in procs):   # each stopped by a signal of its own
                        raise WorkerError(f"the worker processes ended with {left} "
                                          "tasks not done") from None
                    continue
                left -= 1
                if kind == "interrupted":
                    stop = interrupt.Interrupted(value[0])
                    stop.task, stop.rows = index, value[1]
                    raise stop
                if kind == "error":
                    raise WorkerError(value.rstrip().splitlines()[-1] + " (in a worker:\n"
                                      + value.rstrip() + ")")
                feed(1)
                yield index, value
        finally:
            with interrupt.deferred():
                _stop(procs, todo, results)


def _stop(procs, todo, results) -> None:
    """SIGTERM every live worker, drain their last messages, join them all."""
    import time
    for p in procs:
        if p.is_alive():
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_GRACE
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        try:                               # a worker exits only once its queue is flushed
            results.get(timeout=_POLL)
        except queue.Empty:
            pass
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    todo.cancel_join_thread()              # unread tasks must not hold the command open
    todo.close()
    results.close()


def require_dask():
    """The `distributed` module, or BadInput saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise BadInput("--scheduler needs dask.distributed: pip install -e '.[dask]'") from None
    return distributed


class DaskCluster:
    """A Dask distributed cluster: a scheduler address, or a `distributed.Client`
    the caller made (a notebook's, a test's LocalCluster)."""

    def __init__(self, target):
        distributed = require_dask()
        self.own = not isinstance(target, distributed.Client)
        if self.own:
            try:
                self.client = distributed.Client(str(target), timeout=CONNECT_TIMEOUT,
                                                 set_as_default=False)
            except (OSError, TimeoutError, ValueError) as e:
                raise BadInput(f"--scheduler {target}: cannot connect "
                               f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        else:
            self.client = target
        self.address = self.client.scheduler.address     # (None once the client closes)

    def describe(self) -> str:
        return f"dask scheduler {self.address}"

    def run(self, fn, tasks: list[tuple]):
        from distributed import as_completed
        client = self.client
        images: dict[int, object] = {}          # one upload per image, not per task
        futures = {}
        try:
            for i, (task, image) in enumerate(tasks):
                if id(image) not in images:
                    images[id(image)] = client.scatter(image, hash=False)
                futures[client.submit(fn, task, images[id(image)], pure=False)] = i
            for f in as_completed(list(futures), loop=client.loop):
                try:
                    rows = f.result()
                except interrupt.Interrupted:
                    raise
                except Exception as e:
                    raise WorkerError(f"{type(e).__name__}: {e} (in a dask task)") from None
                yield futures[f], rows
        finally:
            with interrupt.deferred():
                client.cancel(list(futures) + list(images.values()))

    def close(self) -> None:
        if self.own:
            self.client.close()


def make(executor, ntasks: int):
    """The executor for `run_matrix(executor=...)`: None or 1 -> None (in this
    process); an int N -> N local processes; a str -> that Dask scheduler; a
    `distributed.Client` -> its cluster; a LocalProcesses or DaskCluster -> itself."""
    if executor is None:
        return None
    if isinstance(executor, bool):
        raise BadInput(f"executor {executor!r}: give a number of jobs or a scheduler")
    if isinstance(executor, int):
        if executor < 1:
            raise BadInput(f"--jobs {executor} must be at least 1")
        jobs = min(executor, ntasks)
        return LocalProcesses(jobs) if jobs > 1 else None
    if isinstance(executor, (LocalProcesses, DaskCluster)):
        return executor
    return DaskCluster(executor)
