"""Tiny guest memories for scanner tests: Keystone-assembled code at a base address."""
from keystone import KS_ARCH_X86, KS_MODE_32, Ks

KS = Ks(KS_ARCH_X86, KS_MODE_32)
BASE = 0x10000


def asm(text: str, base: int = BASE) -> bytes:
    return bytes(KS.asm(text, base)[0])


class Mem:
    """Flat readable bytes at [base, base+len); everything else unmapped."""

    def __init__(self, data: bytes, base: int = BASE, size: int | None = None):
        self.base = base
        self.buf = bytearray(data) + bytes(max(0, (size or len(data)) - len(data)))

    def read(self, addr: int, n: int):
        off = addr - self.base
        if off < 0 or off >= len(self.buf):
            return None
        return bytes(self.buf[off:off + n])

    def write(self, addr: int, data: bytes) -> None:
        off = addr - self.base
        self.buf[off:off + len(data)] = data


# A program with every edge kind the scanner makes (cli, a CR read, a conditional
# jump, a call and its return, pushfd, a jump back, in, a jump through memory).
PROGRAM = """
start: cli
 mov eax, cr0
 test eax, eax
 jz l2
 call f
 pushfd
 jmp start
l2: in al, dx
 jmp dword ptr [{ptr}]
f: ret
"""
