"""One run of a guest reduced to what the guest itself could observe.

An `Observation` is the yardstick of Popek & Goldberg's equivalence: serial output,
exit status, the final registers *as the guest sees them* (`RunResult.regs`, already
mapped through the mode's virtual CPU), and a digest of guest RAM as the guest would
read it.  The hypervisor area lies outside guest RAM (runtime/hyper.py), so hashing
RAM excludes it by construction; under bt, patch jumps and int3 guards in RAM are
replaced by the guest's own bytes first, because the guest never wrote them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from bt.machine import MachineConfig
from bt.mode import Mode
from bt.outcome import Outcome
from bt.x86 import PAGE


class _Sink:
    """A stdout for the VM that drops the guest's serial output (it is kept in
    RunResult.serial anyway); VM(stdout=None) would write it to our stdout."""

    def write(self, data):
        return len(data)

    def flush(self):
        pass


@dataclass
class Observation:
    mode: Mode
    retired: int
    exit_status: int
    reason: Outcome
    message: str
    serial: bytes
    regs: dict
    ram_digest: str
    counters: dict
    extra: dict
    wall: float
    ram: bytes | None = field(default=None, repr=False)   # kept only when asked for

    def key(self) -> tuple:
        """What must be equal for two runs to be indistinguishable to the guest."""
        return (self.exit_status, self.reason, self.serial, tuple(sorted(self.regs.items())),
                self.ram_digest)


def with_mode(config: MachineConfig, mode: Mode | str,
              max_instructions: int | None = None) -> MachineConfig:
    """A copy of `config` for another mode (and budget); the caller's config is untouched."""
    return replace(config, mode=Mode.parse(mode), max_instructions=max_instructions)


def guest_ram(vm) -> bytes:
    """All of guest RAM as the guest would read it (bt's patches and guards hidden)."""
    size = vm.config.mem_bytes
    mode = vm.mode
    visible = getattr(mode, "guest_visible", None)
    data = visible(0, size) if visible is not None else bytes(vm.uc.mem_read(0, size))
    guards = getattr(mode, "guards", None) if visible is None else None   # bt hides its own
    if guards:
        buf = bytearray(data)
        for addr, ins in guards.items():       # an int3 guard over an indirect branch
            if 0 <= addr < size:
                buf[addr] = ins.data[0]
        data = bytes(buf)
    return data


def run(image, config: MachineConfig, mode: Mode | str, max_instructions: int | None = None,
        keep_ram: bool = False, keep_vm: bool = False):
    """Run `image` under `mode` from boot; returns an Observation (and the VM, stopped
    where the run ended, when keep_vm)."""
    from runtime.vm import VM  # late: the runtime pulls in Unicorn
    mode = Mode.parse(mode)
    vm = VM(image, with_mode(config, mode, max_instructions), stdout=_Sink())
    res = vm.run()
    ram = guest_ram(vm)
    obs = Observation(mode=mode, retired=res.retired, exit_status=res.exit_status,
                      reason=res.reason, message=res.message, serial=res.serial,
                      regs=dict(res.regs), ram_digest=hashlib.blake2b(ram, digest_size=16).hexdigest(),
                      counters=res.counters, extra=res.extra, wall=res.wall,
                      ram=ram if keep_ram else None)
    return (obs, vm) if keep_vm else obs


def ram_differences(a: bytes, b: bytes, limit: int = 8) -> list[tuple[int, int]]:
    """Up to `limit` [start, end) ranges where two RAM images differ (page-wise first:
    comparing 4 KiB slices is fast, so only differing pages are walked byte by byte)."""
    out: list[tuple[int, int]] = []
    n = min(len(a), len(b))
    for page in range(0, n, PAGE):
        if a[page:page + PAGE] == b[page:page + PAGE]:
            continue
        i, end = page, min(page + PAGE, n)
        while i < end:
            if a[i] != b[i]:
                j = i
                while j < end and a[j] != b[j]:
                    j += 1
                if out and out[-1][1] >= i - 3:      # merge ranges split by equal bytes
                    out[-1] = (out[-1][0], j)
                else:
                    if len(out) >= limit:
                        return out
                    out.append((i, j))
                i = j
            else:
                i += 1
    return out
