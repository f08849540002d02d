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


def flat_engine(ram: int = 0x200000, esp: int = 0x9000):
    """A bare Unicorn at CPL 0: `ram` bytes from 0, bt.machine's flat GDT at 0x500
    (code 0x08, data 0x10, user 0x1b/0x23), ESP set.  For Unicorn fact tests."""
    from unicorn import Uc, UC_ARCH_X86, UC_MODE_32
    from unicorn import x86_const as X
    from bt.machine import flat_gdt_bytes
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, ram)
    gdt = flat_gdt_bytes()
    uc.mem_write(0x500, gdt)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x500, len(gdt) - 1, 0))
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    for seg in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES):
        uc.reg_write(seg, 0x10)
    uc.reg_write(X.UC_X86_REG_ESP, esp)
    return uc


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
