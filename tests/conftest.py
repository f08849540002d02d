"""Shared helpers: small guests assembled with Keystone inside the tests."""
import pytest
from keystone import Ks, KS_ARCH_X86, KS_MODE_32

from bt.images.image import GuestImage, Segment
from bt.machine import MachineConfig

LOAD = 0x100000
_KS = Ks(KS_ARCH_X86, KS_MODE_32)

# Print EAX's low byte on COM1 and exit with status 0 / an explicit status.
EXIT = "mov al, 0\nout 0xf4, al\n"


def assemble(src: str, addr: int = LOAD) -> bytes:
    return bytes(_KS.asm(src, addr)[0])


def raw_guest(src: str, extra: list[tuple[int, bytes]] | None = None) -> GuestImage:
    segs = [Segment(LOAD, assemble(src))]
    for addr, data in extra or ():
        segs.append(Segment(addr, data))
    return GuestImage("test-guest", "raw", LOAD, segs)


def run(image, mode="emulate", **cfg):
    from runtime.vm import VM
    vm = VM(image, MachineConfig(mode=mode, **cfg), stdout=None)
    return vm, vm.run()


@pytest.fixture
def guest():
    return raw_guest


@pytest.fixture
def mem_protect_calls(monkeypatch):
    """Every Unicorn mem_protect call made while the test runs (milliseconds each:
    trap and bt make none: docs/benchmarks.md, "Stores next to the GDT")."""
    from unicorn import Uc
    calls = []
    real = Uc.mem_protect

    def counted(self, *args, **kw):
        calls.append(args)
        return real(self, *args, **kw)
    monkeypatch.setattr(Uc, "mem_protect", counted)
    return calls
