"""Ctrl-C and SIGTERM: a run stops at its next safe point instead of dying.

A signal must never unwind through a Unicorn callback: Python runs signal
handlers between bytecodes, and the bytecodes that run during a run are those
of the VMM's hooks, so the default `KeyboardInterrupt` surfaced as
"vmm-error: KeyboardInterrupt in VMM hook" (or, in a bare ctypes callback, was
printed and lost), and SIGTERM killed the process with no report.

So, while a run is going on (`stopping_with`), a stop signal only *records*
itself (`pending()`) and asks the running engine to stop (`uc.emu_stop`, a
request Unicorn honours at the next block boundary; harmless between slices);
the VM's run loop sees the request between slices and ends the run with
`Outcome.INTERRUPTED`, so the report and summary are written as for any
other end.  Outside a run the command's handler (`handle_stop_signals`)
raises `Interrupted`, which the command turns into its exit status.

The exit status is the shell's convention for a program a signal ended,
128 + the signal number: 130 for SIGINT, 143 for SIGTERM.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def status_for(signum: int) -> int:
    """Exit status of a run a signal stopped (shell convention, 128 + signal number)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(Exception):
    """A stop signal arrived outside a run (while loading, between bench rows)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal_name(signum)}")
        self.signum = signum
        self.exit_status = status_for(signum)


_pending: int | None = None                 # the first stop signal not yet acted on
_stoppers: list[Callable[[], None]] = []    # the running engines' stop requests, innermost last


def pending() -> int | None:
    """The stop signal received and not yet consumed, or None."""
    return _pending


def consume() -> int | None:
    """Take the pending stop signal (the run loop that acts on it calls this)."""
    global _pending
    signum, _pending = _pending, None
    return signum


def _on_signal(signum, frame) -> None:
    global _pending
    if _pending is None:
        _pending = signum                    # a second Ctrl-C changes nothing: same stop
    if _stoppers:
        _stoppers[-1]()                      # never raise into the VMM's callbacks
        return
    consume()
    raise Interrupted(signum)


def _record(signum, frame) -> None:
    """A stop signal where nothing may unwind (a worker process, a pool's
    shutdown): record it and stop the running engine, never raise."""
    global _pending
    if _pending is None:
        _pending = signum
    if _stoppers:
        _stoppers[-1]()


def install_worker_handlers() -> None:
    """For a `bt-bench` worker process's whole life (bt/measure/executors.py):
    a stop signal ends the current run as `interrupted` (its task then raises
    `Interrupted`) and otherwise only records itself; the worker's loop polls
    `pending()` between tasks, so it exits without a traceback."""
    for s in STOP_SIGNALS:
        signal.signal(s, _record)


@contextmanager
def deferred():
    """While a command cleans up after a stop (terminating its worker
    processes), a further Ctrl-C or SIGTERM is recorded and then dropped
    instead of raising `Interrupted` in the middle of the cleanup."""
    global _pending
    if not _main_thread():
        yield
        return
    before = _pending
    try:
        with _stop_signals_to(_record):
            yield
    finally:
        _pending = before


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def handle_stop_signals():
    """For a command's whole life: SIGINT and SIGTERM stop a run cleanly, and
    outside a run raise `Interrupted` (instead of KeyboardInterrupt / death)."""
    if not _main_thread():
        yield
        return
    with _stop_signals_to(_on_signal):
        yield


@contextmanager
def _stop_signals_to(handler):
    """SIGINT and SIGTERM go to `handler` for the block; the old handlers after."""
    old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def stopping_with(stop: Callable[[], None]):
    """During a run: a stop signal records itself and calls `stop` (which must
    only request the engine to stop).  When no command installed the handlers
    (the Python API, a notebook) Ctrl-C is taken over for the run's duration,
    so it ends the run with a result rather than with a KeyboardInterrupt."""
    took_sigint = (_main_thread()
                   and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if took_sigint:
        signal.signal(signal.SIGINT, _on_signal)
    _stoppers.append(stop)
    try:
        yield
    finally:
        _stoppers.pop()
        if took_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
