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


# Random small programs for the scanner's property tests (one generator for all
# of them): plain and system instructions, branches to other lines, junk bytes.
PROGRAM_LINES = [
    "nop", "cli", "sti", "hlt", "push ebp", "pop ebp", "mov ebp, esp", "mov eax, {imm}",
    "xor eax, eax", "inc ecx", "add eax, ebx", "lea esi, [esi*4 + 0x10]",
    "mov eax, dword ptr [0x{imm:x}]", "mov dword ptr [ebx + 8], eax", "in al, dx",
    "out 0x80, al", "mov eax, cr0", "mov cr3, eax", "lgdt [eax]", "sgdt [eax]", "pushfd", "popfd",
    "push cs", "rep stosb", "lock inc dword ptr [eax]", "fld dword ptr [eax]",
    "movaps xmm0, xmm1", "int 0x80", "iretd", "ret", "ret 4", "int3", "ud2", "jmp eax",
    "call dword ptr [eax]", "call dword ptr [0x10008]", "mov ax, 0x1234", "cpuid", "rdtsc",
    "wbinvd",
]
BRANCHES = ["jmp", "jz", "jnz", "ja", "call"]
SHORT_BRANCHES = ["loop", "jecxz"]          # rel8 only: targets a few lines away


def random_program(rnd, max_lines: int = 40, base: int = BASE) -> bytes:
    n = rnd.randint(1, max_lines)
    lines = []
    for i in range(n):
        r = rnd.random()
        if r < 0.25:
            ins = f"{rnd.choice(BRANCHES)} L{rnd.randrange(n)}"
        elif r < 0.3:
            ins = f"{rnd.choice(SHORT_BRANCHES)} L{rnd.randrange(max(0, i - 4), min(n, i + 5))}"
        elif r < 0.4:
            ins = ".byte " + ", ".join(f"{rnd.randrange(256):#04x}" for _ in range(rnd.randint(1, 4)))
        else:
            ins = rnd.choice(PROGRAM_LINES).format(imm=rnd.randrange(1 << 32))
        lines.append(f"L{i}: {ins}")
    return asm("\n".join(lines), base)
