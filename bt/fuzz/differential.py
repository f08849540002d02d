"""Run one guest under the reference mode and under another; say what differs.

Both runs are bt.measure.observe Observations (serial output, exit status and
reason, final registers as the guest sees them, a digest of guest RAM with
bt's patches hidden, retired instructions).  A `Difference` lists the kinds
that differ, in the fixed order of KINDS, plus a one-line detail per kind.
"""
from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

from bt.machine import MachineConfig
from bt.measure import observe

KINDS = ("status", "serial", "regs", "ram", "retired")
# What the guest itself can see: every kind.  "retired" is virtual time, which
# rdtsc, the timer and every interrupt's landing instruction follow (issue 15,
# exact virtual time), so a count that differs is a divergence even when this
# program never read the clock.
GUEST_KINDS = KINDS
STATUS_BUDGET = 124          # runtime.vm: the instruction budget ran out
FUZZ_MEM_MIB = 8             # small RAM keeps the RAM digest cheap; programs use < 2 MiB
DEFAULT_BUDGET = 200_000     # a generated program retires ~10k; a wild one ends here
# An endless loop of VMM exits retires nothing, so the instruction budget cannot end
# it; a wall-clock limit does (issue 15, cause 1 loops like that).
WALL_LIMIT = 20.0
STATUS_WALL = -1             # our own marker: the run was cut off by WALL_LIMIT
RETRY_SECONDS = 0.25


class _WallTimeout(BaseException):
    """Raised from SIGALRM inside a Unicorn hook.  A BaseException, so the VM's
    catch-all for internal errors (which catches Exception) lets it through."""


@contextmanager
def _wall_limit(seconds: float):
    """Raise _WallTimeout in the main thread after `seconds`, and again every
    RETRY_SECONDS: an alarm that lands as a ctypes callback is being entered is
    swallowed by ctypes (reported through sys.unraisablehook, silenced here)."""
    fired = []

    def expire(signum, frame):
        fired.append(True)
        raise _WallTimeout()

    def unraisable(info):
        if not isinstance(info.exc_value, _WallTimeout):
            old_hook(info)
    old = signal.signal(signal.SIGALRM, expire)
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    signal.setitimer(signal.ITIMER_REAL, seconds, RETRY_SECONDS)
    try:
        yield fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        sys.unraisablehook = old_hook


def observe_run(image, config: MachineConfig, mode: str, max_instructions: int,
                keep_ram: bool = False, wall_limit: float = WALL_LIMIT) -> observe.Observation:
    """observe.run, or an Observation with status STATUS_WALL when the run spends
    more than `wall_limit` seconds (main thread only: it uses SIGALRM)."""
    fired: list = []
    try:
        with _wall_limit(wall_limit) as fired:
            obs = observe.run(image, config, mode, max_instructions, keep_ram=keep_ram)
        if not fired:
            return obs
        raise _WallTimeout()
    except BaseException as e:
        # Once the alarm fired, whatever ended the run (our exception, or the VM's
        # hook guard turning it into a vmm-error and then a broken state) is the timeout.
        if fired:
            return _failed(mode, "wall-timeout", f"no end after {wall_limit:g} s")
        if not isinstance(e, Exception):
            raise
        return _failed(mode, "observe-error", f"{type(e).__name__}: {e}")


def _failed(mode: str, reason: str, message: str) -> observe.Observation:
    return observe.Observation(mode=mode, retired=-1, exit_status=STATUS_WALL, reason=reason,
                               message=message, serial=b"", regs={}, ram_digest="",
                               counters={}, extra={}, wall=0.0)


@dataclass
class Difference:
    kinds: tuple[str, ...]
    details: dict[str, str] = field(default_factory=dict)
    reference: observe.Observation | None = field(default=None, repr=False)
    other: observe.Observation | None = field(default=None, repr=False)

    @property
    def divergent(self) -> bool:
        return bool(self.kinds)

    @property
    def guest_visible(self) -> tuple[str, ...]:
        return tuple(k for k in self.kinds if k in GUEST_KINDS)

    @property
    def unfinished(self) -> bool:
        """The run under test never finished (budget or wall limit) while the reference did."""
        unfinished = (STATUS_BUDGET, STATUS_WALL)
        return (self.other is not None and self.other.exit_status in unfinished
                and self.reference.exit_status not in unfinished)

    def signature(self) -> tuple:
        """What a shrunk program must keep to count as the same divergence: the
        guest-visible kinds and how each side ended."""
        ends = tuple((o.exit_status, o.reason) for o in (self.reference, self.other) if o is not None)
        return (self.guest_visible or self.kinds, ends)

    def text(self) -> str:
        if not self.kinds:
            return "identical"
        return "; ".join(f"{k}: {self.details[k]}" for k in self.kinds)


def _first_serial_difference(a: bytes, b: bytes) -> str:
    la, lb = a.split(b"\n"), b.split(b"\n")
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return f"line {i + 1}: {x[:40]!r} vs {y[:40]!r}"
    return f"{len(la)} vs {len(lb)} lines"


def compare(ref: observe.Observation, other: observe.Observation) -> Difference:
    kinds, details = [], {}
    if (ref.exit_status, ref.reason) != (other.exit_status, other.reason):
        kinds.append("status")
        details["status"] = (f"{ref.exit_status} {ref.reason} vs {other.exit_status} {other.reason}"
                             f" ({other.message[:80]})" if other.message else
                             f"{ref.exit_status} {ref.reason} vs {other.exit_status} {other.reason}")
    if ref.serial != other.serial:
        kinds.append("serial")
        details["serial"] = _first_serial_difference(ref.serial, other.serial)
    regs = sorted(k for k in set(ref.regs) | set(other.regs) if ref.regs.get(k) != other.regs.get(k))
    if regs:
        kinds.append("regs")
        details["regs"] = ", ".join(f"{k} {ref.regs.get(k, 0):#x} vs {other.regs.get(k, 0):#x}" for k in regs)
    if ref.ram_digest != other.ram_digest:
        kinds.append("ram")
        if ref.ram is not None and other.ram is not None:
            ranges = observe.ram_differences(ref.ram, other.ram, limit=4)
            details["ram"] = ", ".join(f"[{lo:#x}, {hi:#x})" for lo, hi in ranges)
        else:
            details["ram"] = "digests differ"
    if ref.retired != other.retired:
        kinds.append("retired")
        details["retired"] = f"{ref.retired} vs {other.retired}"
    return Difference(tuple(kinds), details, ref, other)


def run_pair(image, mode: str = "bt", *, reference: str = "emulate",
             max_instructions: int = DEFAULT_BUDGET, mem_mib: int = FUZZ_MEM_MIB,
             keep_ram: bool = False, wall_limit: float = WALL_LIMIT) -> Difference:
    """Run `image` under `reference` and `mode` and compare what the guest could see."""
    config = MachineConfig(mem_mib=mem_mib)
    ref = observe_run(image, config, reference, max_instructions, keep_ram, wall_limit)
    other = observe_run(image, config, mode, max_instructions, keep_ram, wall_limit)
    return compare(ref, other)


def run_program(program, mode: str = "bt", **options) -> Difference:
    """`run_pair` for a generated Program (generator.py)."""
    return run_pair(program.image(), mode, **options)
