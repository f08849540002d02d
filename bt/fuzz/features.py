"""The statement makers of the program generator, one per named feature.

Each maker takes a `random.Random` and the statement's id and returns a
`Stmt`: assembly lines for the program body and, optionally, out-of-line lines
(functions, targets) placed after the epilogue.  Labels are prefixed with the
statement id, so deleting statements while shrinking never breaks another one.
Every statement that can fault first stores the address to resume at in
`RESUME` (guest.py), and every loop is bounded by a counter.

`CAUSES` maps a feature to the issue-15 causes it can expose, so a campaign
report can say which features are expected to diverge today.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from bt.fuzz import guest as G
from bt.machine import DEFAULT_HYPER_BASE

GPRS = ("eax", "ebx", "ecx", "edx", "esi", "edi")
GPRS16 = {"eax": "ax", "ebx": "bx", "ecx": "cx", "edx": "dx", "esi": "si", "edi": "di"}
GPRS8 = {"eax": "al", "ebx": "bl", "ecx": "cl", "edx": "dl"}


@dataclass
class Stmt:
    sid: int
    feature: str
    body: list[str]
    aux: list[str] = field(default_factory=list)


MAKERS: dict[str, Callable[[random.Random, int], Stmt]] = {}
CAUSES: dict[str, tuple[int, ...]] = {}


def feature(name: str, causes: tuple[int, ...] = ()):
    def register(fn):
        MAKERS[name] = lambda rng, sid: Stmt(sid, name, *_as_parts(fn(rng, f"s{sid}_")))
        CAUSES[name] = causes
        return fn
    return register


def _as_parts(made) -> tuple[list[str], list[str]]:
    """A maker returns body lines, or (body lines, out-of-line lines)."""
    return made if isinstance(made, tuple) else (made, [])


def _resume(p: str, label: str = "r") -> str:
    return f"mov dword ptr [{G.RESUME:#x}], {p}{label}"


def _reg(rng) -> str:
    return rng.choice(GPRS)


def _imm(rng) -> int:
    return rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                       rng.getrandbits(32), rng.getrandbits(8)))


def _mem(rng, size: str = "dword") -> str:
    return f"{size} ptr [ebp + {rng.randrange(0, G.SCRATCH_SIZE - 4) & ~3:#x}]"


def _alu_line(rng) -> str:
    r, s = _reg(rng), _reg(rng)
    k = rng.randrange(14)
    if k == 0:
        return f"{rng.choice(('add', 'sub', 'and', 'or', 'xor', 'adc', 'sbb', 'cmp', 'test'))} {r}, {s}"
    if k == 1:
        return f"{rng.choice(('add', 'sub', 'and', 'or', 'xor', 'adc', 'sbb', 'cmp'))} {r}, {_imm(rng):#x}"
    if k == 2:
        return f"{rng.choice(('inc', 'dec', 'neg', 'not'))} {r}"
    if k == 3:
        return f"{rng.choice(('shl', 'shr', 'sar', 'rol', 'ror', 'rcl', 'rcr'))} {r}, {rng.randrange(1, 32)}"
    if k == 4:
        return f"imul {r}, {s}"
    if k == 5:
        return f"lea {r}, [{s} + {r}*{rng.choice((1, 2, 4, 8))} + {rng.getrandbits(16):#x}]"
    if k == 6:
        return f"set{rng.choice(('z', 'c', 'o', 's', 'p', 'a', 'l', 'g'))} {GPRS8[rng.choice(list(GPRS8))]}"
    if k == 7:
        return f"cmov{rng.choice(('z', 'nz', 'c', 'nc', 'o', 's', 'be', 'ge'))} {r}, {s}"
    if k == 8:
        # OF, SF, AF, PF are undefined after the bt family, and Unicorn's values
        # depend on where its translation blocks start (a bt stub in between
        # changes them: tests/runtime/test_unicorn_facts.py), so the statement
        # defines them again at once: adc reads the bit (CF) and sets every flag.
        return f"{rng.choice(('bt', 'bts', 'btr', 'btc'))} {r}, {rng.randrange(32)}\nadc {r}, 0"
    if k == 9:
        return f"mov {_mem(rng)}, {r}"
    if k == 10:
        return f"{rng.choice(('add', 'xor', 'sub', 'or'))} {r}, {_mem(rng)}"
    if k == 11:
        return f"{rng.choice(('add', 'xor', 'and', 'adc'))} {_mem(rng)}, {r}"
    if k == 12:
        return f"{rng.choice(('bswap', 'not'))} {r}"
    return f"{rng.choice(('stc', 'clc', 'cmc', 'cld'))}"


@feature("alu")
def _alu(rng, p):
    lines = [_alu_line(rng) for _ in range(rng.randrange(1, 6))]
    if rng.random() < 0.25:       # a bounded loop around them (ecx is the counter)
        lines = [f"push ecx", f"mov ecx, {rng.randrange(1, 20)}", f"{p}loop:",
                 *[l for l in lines if "ecx" not in l and " cl" not in l],
                 "dec ecx", f"jnz {p}loop", "pop ecx"]
    return lines


# EFLAGS bits a generated popf may set: arithmetic flags, DF, IF, IOPL, AC, ID.
# TF and NT are left out (single-step and nested-task returns are not under test).
POPF_MASK = 0x00247FD5 & ~0x4100


def _flags_value(rng) -> int:
    return (rng.getrandbits(32) & POPF_MASK) | 0x2


@feature("eflags")
def _eflags(rng, p):
    r = _reg(rng)
    return [f"push {_flags_value(rng):#x}", "popfd", "pushfd", f"pop {r}",
            *(["cld"] if rng.random() < 0.5 else []), "pushfd", f"xor {r}, dword ptr [esp]", "popfd"]


@feature("eflags16", causes=(2,))
def _eflags16(rng, p):
    r = _reg(rng)
    if rng.random() < 0.5:     # pushf (16-bit), then look at all of EFLAGS
        op = [".byte 0x66, 0x9c", "pop ax"]
    else:                      # popf (16-bit) of a random word
        op = [".byte 0x66, 0x68", f".word {rng.getrandbits(16) & POPF_MASK | 2:#x}", ".byte 0x66, 0x9d"]
    upper = rng.choice((0x40000, 0x200000, 0x240000))     # AC / ID: bits a 16-bit form must not touch
    return [f"push {_flags_value(rng) | upper:#x}", "popfd", *op, "pushfd", f"pop {r}", "push 0x2", "popfd"]


@feature("cli_sti")
def _cli_sti(rng, p):
    r = _reg(rng)
    return [rng.choice(("cli", "sti")), rng.choice(("cli", "sti", "nop")), "pushfd", f"pop {r}", "cli"]


@feature("tables")
def _tables(rng, p):
    r = _reg(rng)
    k = rng.randrange(4)
    if k == 0:
        return [f".byte 0x0f, 0x01, 0x05", f".long {G.TABLE_OUT:#x}", f"mov {r}, dword ptr [{G.TABLE_OUT + 2:#x}]"]
    if k == 1:
        return [f".byte 0x0f, 0x01, 0x0d", f".long {G.TABLE_OUT + 8:#x}", f"mov {r}, dword ptr [{G.TABLE_OUT + 8:#x}]"]
    return [f"{('sldt', 'str')[k - 2]} {r}"]


@feature("smsw", causes=(4,))
def _smsw(rng, p):
    r = _reg(rng)
    return [rng.choice((f"smsw {r}", f"smsw {GPRS16[r]}", f"smsw word ptr [ebp + 0x10]"))]


SELECTORS = (0x00, 0x08, 0x0B, 0x10, 0x13, 0x1B, 0x23, 0x28, 0x38, 0x40, 0x48, 0x49, 0x4B, 0x7F8, 0x11)


@feature("selectors", causes=(7,))
def _selectors(rng, p):
    r = _reg(rng)
    sel = rng.choice(SELECTORS)
    op = rng.choice(("lar", "lsl", "verr", "verw"))
    if op in ("lar", "lsl"):
        return [f"mov ecx, {sel:#x}", f"mov {r if r != 'ecx' else 'eax'}, {rng.getrandbits(32):#x}",
                f"{op} {r if r != 'ecx' else 'eax'}, ecx", "pushfd", "pop edx"]
    return [f"mov ecx, {sel:#x}", f"{op} cx", "pushfd", "pop edx"]


@feature("sreg_read")
def _sreg_read(rng, p):
    r = _reg(rng)
    k = rng.randrange(3)
    if k == 0:
        return [f"mov {r}, {rng.choice(('cs', 'ss', 'ds', 'es'))}"]
    if k == 1:
        return [f".byte {rng.choice(('0x0e', '0x16', '0x1e'))}", f"pop {r}"]
    return [f"push {rng.getrandbits(32):#x}", f"mov word ptr [esp], {rng.choice(('cs', 'ss'))}", f"pop {r}"]


@feature("sreg_read16", causes=(3,))
def _sreg_read16(rng, p):
    r = _reg(rng)
    pre = f"mov {r}, {rng.getrandbits(32):#x}"    # the upper half must survive a 16-bit write
    if rng.random() < 0.5:
        return [pre, f"mov {GPRS16[r]}, {rng.choice(('cs', 'ss', 'ds'))}"]
    return [pre, f".byte 0x66, {rng.choice(('0x0e', '0x16'))}", f"pop {GPRS16[r]}"]


def _seg_load(rng, p, sels, regs=("ds", "es", "fs", "gs")) -> list[str]:
    sreg = rng.choice(regs)
    sel = rng.choice(sels)
    load = ([f"mov eax, {sel:#x}", f"mov {sreg}, ax"] if rng.random() < 0.6 else
            [f"push {sel:#x}", {"ds": ".byte 0x1f", "es": ".byte 0x07", "ss": ".byte 0x17",
                                "fs": ".byte 0x0f, 0xa1", "gs": ".byte 0x0f, 0xa9"}[sreg]])
    # A faulting pop leaves its operand on the stack: esp is restored either way.
    lines = [f"mov dword ptr [{G.SAVED_ESP:#x}], esp", _resume(p), *load, f"{p}r:",
             f"mov esp, dword ptr ss:[{G.SAVED_ESP:#x}]", "xor ebx, ebx", f"mov bx, {sreg}"]
    if sreg in ("ds", "es", "ss") or rng.random() < 0.5:
        lines += [f"mov eax, {G.KDATA:#x}", f"mov {sreg}, ax"]
    return lines


@feature("seg_load")
def _seg_load_rpl0(rng, p):
    return _seg_load(rng, p, (0x00, 0x08, 0x10, 0x23, 0x28, 0x48, 0x7F8, 0x1B))   # 0x38/0x40 (accessed bit clear): feature "accessed"


@feature("seg_load_rpl", causes=(6,))
def _seg_load_rpl(rng, p):
    return _seg_load(rng, p, (0x11, 0x12, 0x13, 0x49, 0x4A, 0x09, 0x21, 0x22), ("ds", "es", "fs", "gs", "ss"))


@feature("ss_load")
def _ss_load(rng, p):
    return _seg_load(rng, p, (0x10, 0x10, 0x00, 0x08, 0x23, 0x48, 0x7F8), ("ss",))


@feature("lss", causes=(5,))
def _lss(rng, p):
    sel = rng.choice((G.KDATA, G.KDATA, 0x00, 0x23))
    return [f"mov dword ptr [{G.SAVED_ESP:#x}], esp", f"lea eax, [esp - {rng.randrange(0, 64, 4)}]",
            f"mov dword ptr [{G.FAR_PTR:#x}], eax", f"mov word ptr [{G.FAR_PTR + 4:#x}], {sel:#x}",
            _resume(p), f"lss esp, [{G.FAR_PTR:#x}]", f"{p}r:", "mov ebx, esp",
            f"mov esp, dword ptr ss:[{G.SAVED_ESP:#x}]", "sub ebx, esp",
            f"mov eax, {G.KDATA:#x}", "mov ss, ax", f"mov esp, dword ptr [{G.SAVED_ESP:#x}]"]


def _data_desc(base: int) -> tuple[int, int]:
    """A present ring-0 data descriptor (accessed bit already set), 4 GiB limit."""
    return (((base & 0xFFFF) << 16) | 0xFFFF,
            (base & 0xFF000000) | 0x00CF9300 | ((base >> 16) & 0xFF))


@feature("gdt_store")
def _gdt_store(rng, p):
    """Rewrite the unused GDT slot with stores and load it at once: the shadow
    GDT of trap/bt must have the new descriptor before the next selector load
    (runtime/tablewatch.py); then change one base byte and reload.  A store just
    past the table's limit, on its page, must change nothing."""
    slot = G.GDT_ADDR + G.SPARE
    base = G.SCRATCH + rng.randrange(0, 0x40, 4)
    lo, hi = _data_desc(base)
    sreg = rng.choice(("fs", "gs"))
    r, s = _reg(rng), _reg(rng)
    order = [f"mov dword ptr [{slot:#x}], {lo:#x}", f"mov dword ptr [{slot + 4:#x}], {hi:#x}"]
    if rng.random() < 0.5:
        order.reverse()
    return [*order, f"mov dword ptr [{G.GDT_ADDR + G.GDT_LIMIT + 1 + rng.randrange(0, 0x40, 4):#x}], esp",
            f"mov eax, {G.SPARE:#x}", f"mov {sreg}, ax", f"mov {r}, dword ptr {sreg}:[0]",
            f"mov byte ptr [{slot + 2:#x}], {(base + rng.randrange(4, 0x40, 4)) & 0xFF:#x}",
            f"mov {sreg}, ax", f"mov {s}, dword ptr {sreg}:[0]", f"mov eax, {G.KDATA:#x}", f"mov {sreg}, ax"]


@feature("accessed", causes=(7,))
def _accessed(rng, p):
    sel = rng.choice((G.KDATA_FRESH, G.KCODE_FRESH))
    sreg = rng.choice(("es", "fs", "gs"))
    return [f"mov eax, {sel:#x}", f"mov {sreg}, ax", f"mov ecx, {sel:#x}", "lar edx, ecx",
            f"mov eax, dword ptr [{G.GDT_ADDR + sel + 4:#x}]", f"mov eax, {G.KDATA:#x}", f"mov {sreg}, ax"]


def _far_jmp(p, sel: int) -> list[str]:
    """jmp far sel:t, look at cs, and return to KCODE with retf."""
    return [_resume(p), ".byte 0xea", f".long {p}t", f".word {sel:#x}", f"{p}t:", f"{p}r:",
            "xor ecx, ecx", "mov cx, cs", f"mov eax, {G.KCODE:#x}", "push eax", f"mov eax, {p}back",
            "push eax", "retf", f"{p}back:"]


@feature("far_rpl", causes=(6,))
def _far_rpl(rng, p):
    return _far_jmp(p, rng.choice((0x09, 0x0A, 0x0B, G.KCODE_FRESH | 1)))


@feature("far")
def _far(rng, p):
    k = rng.randrange(4)
    if k == 0:      # far jmp
        return _far_jmp(p, rng.choice((G.KCODE, G.KCODE, 0x00, G.KDATA)))
    if k == 1:      # far call to an out-of-line function ending in retf
        return ([_resume(p), ".byte 0x9a", f".long {p}fn", f".word {G.KCODE:#x}", f"{p}r:"],
                [f"{p}fn:", "mov eax, dword ptr [esp+4]", "xor esi, eax", "retf"])
    if k == 2:      # far call through memory (ff /3: Keystone rejects `call fword ptr`)
        return ([f"mov dword ptr [{G.FAR_PTR:#x}], {p}fn", f"mov word ptr [{G.FAR_PTR + 4:#x}], {G.KCODE:#x}",
                 _resume(p), ".byte 0xff, 0x1d", f".long {G.FAR_PTR:#x}", f"{p}r:"],
                [f"{p}fn:", "mov edi, dword ptr [esp+4]", "retf"])
    return [".byte 0x0e", f"mov eax, {p}t", "push eax", "retf", f"{p}t:"]    # push cs; push t; retf


@feature("iret")
def _iret(rng, p):
    flags = _flags_value(rng) & ~0x200 if rng.random() < 0.7 else _flags_value(rng)
    return [f"push {flags:#x}", f"push {G.KCODE:#x}", f"mov eax, {p}t", "push eax", "iretd", f"{p}t:",
            "pushfd", "pop ebx", "push 0x2", "popfd"]


@feature("iret_self")
def _iret_self(rng, p):
    """Linux's iret_to_self (sync_core): `pushfl; pushl %cs; pushl $1f; iret; 1:`,
    whose iretd closes the pushfd's jump patch under bt (patcher/policy.py
    `_closing_iret`).  `push imm32` of a label as bytes: Keystone refuses it."""
    pre = rng.choice(("cli", "sti", "nop"))
    return [pre, "pushfd", ".byte 0x0e", ".byte 0x68", f".long {p}t", "iretd", f"{p}t:",
            "pushfd", "pop ebx"]


# The 32-bit TSS's fields (SDM vol. 3, 7.2.1).
TSS_CR3, TSS_EIP, TSS_EFLAGS, TSS_EAX, TSS_ESP, TSS_EBP, TSS_ES, TSS_CS, TSS_LDT = (
    0x1C, 0x20, 0x24, 0x28, 0x38, 0x3C, 0x48, 0x4C, 0x60)


@feature("task")
def _task(rng, p):
    """A hardware task switch and back: a far call to the second TSS or
    through the task gate (nested: back link, NT, iretd returns), or a far jmp
    there and a far jmp back to the first TSS.  The second task's registers
    come from its TSS; what it computes goes to scratch memory, with its
    EFLAGS (NT), `str` and CR0 (TS), and the switches leave both TSSs and the
    GDT's busy bits in RAM for the digest."""
    how = rng.choice(("call", "call_gate", "jmp"))
    sel = G.TASK_GATE_SEL if how == "call_gate" else G.TSS2_SEL
    t = G.TSS2_ADDR
    regs = [f"mov dword ptr [{t + TSS_EAX + 4 * i:#x}], {rng.getrandbits(32):#x}" for i in (0, 1, 2, 3, 6, 7)]
    flags = _flags_value(rng) & ~0x4100 & (~0x200 if rng.random() < 0.5 else ~0)   # no TF, NT from the switch
    body = ["mov eax, cr3", f"mov dword ptr [{t + TSS_CR3:#x}], eax",
            f"mov dword ptr [{t + TSS_EIP:#x}], {p}t", f"mov dword ptr [{t + TSS_EFLAGS:#x}], {flags:#x}",
            *regs, f"mov dword ptr [{t + TSS_ESP:#x}], {G.TASK2_STACK_TOP:#x}",
            f"mov dword ptr [{t + TSS_EBP:#x}], {G.SCRATCH:#x}",
            *[f"mov dword ptr [{t + TSS_ES + 4 * i:#x}], {v:#x}"
              for i, v in enumerate((G.KDATA, G.KCODE, G.KDATA, G.KDATA, rng.choice((G.KDATA, 0)), G.KDATA))],
            f"mov dword ptr [{t + TSS_LDT:#x}], 0", f"mov word ptr [{t + 0x66:#x}], 0x68",
            ".byte 0x9a" if how != "jmp" else ".byte 0xea", ".long 0", f".word {sel:#x}", f"{p}r:"]
    work = [_alu_line(rng) for _ in range(rng.randrange(1, 4))]
    back = ["iretd"] if how != "jmp" else [".byte 0xea", ".long 0", f".word {G.TSS_SEL:#x}"]
    out = [f"{p}t:", *work, f"mov dword ptr [ebp + {rng.randrange(0, 0x40, 4):#x}], eax", "pushfd",
           "pop dword ptr [ebp + 0x40]", "str word ptr [ebp + 0x44]", "mov eax, cr0",
           "mov dword ptr [ebp + 0x48], eax", *back]
    return body, out


@feature("ring3", causes=(13,))
def _ring3(rng, p):
    user = [_alu_line(rng) for _ in range(rng.randrange(0, 3))]
    user += rng.sample(["mov eax, fs", "mov ebx, gs", "mov ecx, cs", "mov edx, ss", "mov esi, ds",
                        "pushfd\n    pop edi", "smsw eax"], rng.randrange(1, 4))
    return [f"mov dword ptr [{G.SAVED_ESP:#x}], esp", _resume(p, "back"),
            f"push {G.UDATA:#x}", f"push {G.USER_STACK_TOP:#x}", f"push {rng.choice((0x2, 0x202, 0x3002)):#x}",
            f"push {G.UCODE:#x}", f"mov eax, {p}user", "push eax",
            f"mov eax, {G.UDATA:#x}", "mov ds, ax", "mov es, ax", "iretd",
            f"{p}user:", *user, f"int {G.RING3_RETURN_VECTOR:#x}",
            f"{p}back:", f"mov eax, {G.KDATA:#x}", "mov ds, ax", "mov es, ax", "mov fs, ax", "mov gs, ax"]


# The `v86` feature's segments: code in the program image (LOAD + x is
# 0xFFFF:x + 0x10 while the program stays under 64 KiB), data and stack in low
# memory no other feature uses.
V86_CS, V86_DS, V86_SS, V86_SP = 0xFFFF, 0x5000, 0x5000, 0x1000
V86_DATA = 0x100                # DS offsets 0x100.. (linear 0x50100..)
V86_GPRS = ("ax", "bx", "cx", "dx", "si", "di")


def _v86_line(rng) -> str:
    r, s = rng.choice(V86_GPRS), rng.choice(V86_GPRS)
    off = V86_DATA + rng.randrange(0, 0x40, 2)
    k = rng.randrange(9)
    if k == 0:
        return f"{rng.choice(('add', 'sub', 'and', 'or', 'xor', 'adc', 'sbb', 'cmp'))} {r}, {s}"
    if k == 1:
        return f"{rng.choice(('add', 'sub', 'xor', 'or'))} {r}, {rng.getrandbits(16):#x}"
    if k == 2:
        return f"{rng.choice(('shl', 'shr', 'sar', 'rol', 'rcr'))} {r}, {rng.randrange(1, 16)}"
    if k == 3:
        return f"mov word ptr [{off:#x}], {r}\n{rng.choice(('add', 'xor', 'mov'))} {s}, word ptr [{off:#x}]"
    if k == 4:
        return f"push {r}\npop {s}"
    if k == 5:          # the V86 view of FLAGS/EFLAGS (IOPL 3: no fault)
        return rng.choice((f"pushf\npop {r}", f"pushfd\npop {r}\npop {s}"))
    if k == 6:
        return f"mov {r}, {rng.choice(('cs', 'ds', 'es', 'ss'))}"
    if k == 7:
        return rng.choice(("cli", "sti", "cld", "std", "cmc"))
    return f"mov es, {r}\nmov {s}, es\nmov ax, {V86_DS:#x}\nmov es, ax"


# What may end a V86 excursion with a fault (guest.py: a fault from V86 code
# resumes after the statement): #GP for hlt, for the IOPL-sensitive ones at
# IOPL < 3 and for `int n` through a DPL-0 gate; #DE; #UD; int3 and into.
V86_FAULTS = ("hlt", "cli", "sti", "pushf", "popf", "int 0x40", "xor cl, cl\ndiv cl", "ud2", "int3",
              "mov al, 0x7f\nadd al, 1\ninto")


def _asm16(lines: list[str]) -> list[str]:
    """16-bit code as bytes (the program is assembled as 32-bit code)."""
    from keystone import Ks, KS_ARCH_X86, KS_MODE_16
    code, _ = Ks(KS_ARCH_X86, KS_MODE_16).asm("\n".join(lines), 0)
    return [".byte " + ", ".join(f"{b:#x}" for b in code)]


@feature("v86")
def _v86(rng, p):
    """Virtual-8086 code (runtime/v86.py): an iretd with VM set (IOPL 0, 1 or
    3, IF either way) into 16-bit code in the program image, ALU, loads and
    stores through DS, pushf(d), segment reads and loads, cli/sti (ticks land
    there with `timer`; at IOPL < 3 the IOPL-sensitive ones fault), maybe a
    faulting instruction (V86_FAULTS), then `int` through the DPL-3 ring-3
    return gate (#GP at IOPL < 3).  Whatever leaves V86 pushes the V86 frame
    on the TSS's ring-0 stack with DS/ES/FS/GS null in the handler; a fault
    comes back here through guest.py's fz_exception, which folds its frame
    into the digest."""
    code = [_v86_line(rng) for _ in range(rng.randrange(1, 6))]
    if rng.random() < 0.4:
        code.append(rng.choice(V86_FAULTS))
    code.append(f"int {G.RING3_RETURN_VECTOR:#x}")
    flags = rng.choice((0x23002, 0x23202, 0x23082, 0x20002, 0x20202, 0x21282))
    return ([f"mov dword ptr [{G.SAVED_ESP:#x}], esp", _resume(p, "back"),
             "push 0", "push 0", f"push {V86_DS:#x}", f"push {V86_DS:#x}", f"push {V86_SS:#x}",
             f"push {V86_SP:#x}", f"push {flags:#x}", f"push {V86_CS:#x}",
             f"mov eax, {p}v", f"sub eax, {V86_CS << 4:#x}", "push eax", "iretd",
             f"{p}back:", f"mov eax, {G.KDATA:#x}", "mov ds, ax", "mov es, ax", "mov fs, ax", "mov gs, ax"],
            [f"{p}v:", *_asm16(code)])


@feature("int")
def _int(rng, p):
    v = rng.choice(G.INT_VECTORS + (G.TRAP_GATE_VECTOR,))
    pre = [rng.choice(("cli", "sti", "nop"))]
    return [*pre, f"int {v:#x}", "cli"]


@feature("exceptions")
def _exceptions(rng, p):
    k = rng.randrange(4)
    if k == 0:
        return [_resume(p), "xor edx, edx", f"mov eax, {rng.getrandbits(32):#x}", "xor ecx, ecx",
                "div ecx", f"{p}r:"]
    if k == 1:
        return [_resume(p), "ud2", f"{p}r:"]
    if k == 2:
        return [_resume(p), "int3", f"{p}r:"]
    return [_resume(p), f"mov eax, {rng.choice((0x7F8, 0x28, 0x1B)):#x}", "mov es, ax", f"{p}r:",
            f"mov eax, {G.KDATA:#x}", "mov es, ax"]


@feature("ports")
def _ports(rng, p):
    k = rng.randrange(4)
    if k == 0:
        return [f"mov al, {rng.getrandbits(8):#x}", "out 0x80, al"]
    if k == 1:
        return [f"mov edx, {rng.choice((0x3FB, 0x3FC, 0x3FD, 0x3F9)):#x}", "in al, dx", "movzx ebx, al"]
    if k == 2:
        return [f"mov al, {rng.randrange(0x10, 0x30):#x}", "out 0x70, al", "in al, 0x71", "movzx esi, al"]
    return ["in al, 0x21", "movzx edi, al"]


@feature("io_flags")
def _io_flags(rng, p):
    """Flags set before an in/out and read after the instruction that follows it
    (the clock's sync site, runtime/_clock.c "Lazy flags at a sync-hook site"):
    rdtsc and cpuid there used to garble them in every mode (program 1825)."""
    port = rng.choice(("out 0x80, al", "in al, 0x80", "in al, 0x21"))
    after = rng.choice(("rdtsc", "cpuid", "out 0x80, al", "in al, 0x21", "nop",
                        f"mov ebx, {_mem(rng)}", f"mov {_mem(rng)}, ebx"))
    r = rng.choice(("esi", "edi"))
    return ["xor ecx, ecx", f"mov eax, {_imm(rng):#x}", _alu_line(rng), port, after, "pushfd", f"pop {r}"]


@feature("timer")
def _timer(rng, p):
    """Program the 8259 (IRQ 0 at vector 0x20, the rest masked) and the PIT
    (mode 2, a reload of 1-4 counts: a tick every ~85-340 instructions of
    virtual time) and set IF: the later statements run with timer interrupts
    landing wherever virtual time puts them, and the tick handler folds each
    frame into the digest (guest.py `fz_tick`).  The VMM must take each at
    the instruction emulate takes it (interrupt windows, shadows, stubs)."""
    reload = rng.randrange(1, 5)
    return ["mov al, 0x11", "out 0x20, al", f"mov al, {G.TICK_VECTOR:#x}", "out 0x21, al",
            "mov al, 4", "out 0x21, al", "mov al, 1", "out 0x21, al", "mov al, 0xfe", "out 0x21, al",
            "mov al, 0x34", "out 0x43, al", f"mov al, {reload}", "out 0x40, al", "mov al, 0", "out 0x40, al",
            "sti"]


@feature("cpuid")
def _cpuid(rng, p):
    return [f"mov eax, {rng.choice((0, 1, 0x80000000, 0x80000001)):#x}", "xor ecx, ecx", "cpuid"]


@feature("rdtsc")
def _rdtsc(rng, p):
    return ["rdtsc", f"mov {rng.choice(('esi', 'edi'))}, eax"]


@feature("ctrl_regs", causes=(8,))
def _ctrl_regs(rng, p):
    r = _reg(rng)
    src = rng.choice(("cr0", "cr2", "cr3", "cr4", "dr6", "dr7"))
    lines = [f"mov {r}, {src}"]
    if rng.random() < 0.3:
        lines = ["mov eax, cr0", "mov cr0, eax", f"mov {r}, cr0"]
    return lines


@feature("invlpg", causes=(15,))
def _invlpg(rng, p):
    return [f"invlpg byte ptr [{rng.choice((G.SCRATCH, G.LOAD, 0x0)):#x}]"]


@feature("smc")
def _smc(rng, p):
    v = rng.getrandbits(32)
    return [f"mov dword ptr [{p}k + 1], {v:#x}", f"{p}k:", "add eax, 0x11111111", "mov ebx, eax"]


@feature("smc_rmw", causes=(1,))
def _smc_rmw(rng, p):
    k = rng.randrange(3)
    if k == 0:
        return [f"mov ecx, {rng.getrandbits(32):#x}", f"xchg dword ptr [{p}k + 1], ecx", f"{p}k:", "add eax, 0x11111111"]
    if k == 1:
        return [f"add byte ptr [{p}k + 1], {rng.randrange(1, 256)}", f"{p}k:", "add eax, 0x11111111"]
    return [f"xor dword ptr [{p}k + 1], {rng.getrandbits(32):#x}", f"{p}k:", "add eax, 0x11111111"]


@feature("smc_loop")
def _smc_loop(rng, p):
    return ["push ecx", f"mov ecx, {rng.randrange(2, 40)}", f"{p}loop:",
            f"mov dword ptr [{p}k + 1], ecx", f"{p}k:", "add eax, 0x11111111",
            "dec ecx", f"jnz {p}loop", "pop ecx"]


@feature("computed", causes=(9,))
def _computed(rng, p):
    k = rng.randrange(3)
    tail = rng.choice((["mov ebx, cs"], ["pushfd", "pop ebx"], ["xor ebx, 0x55"], ["mov bx, ss"]))
    if k == 0:
        return [f"mov eax, {p}t", "push eax", "ret", "nop", f"{p}t:", *tail]
    if k == 1:
        return [f"mov eax, {p}t", "jmp eax", "ud2", f"{p}t:", *tail]
    return ([f"mov eax, {p}fn", "call eax"], [f"{p}fn:", *tail, "ret"])


@feature("fptr", causes=(10,))
def _fptr(rng, p):
    return ([f"mov dword ptr [{G.FPTR:#x}], {p}a", f"call dword ptr [{G.FPTR:#x}]",
             f"mov dword ptr [{G.FPTR:#x}], {p}b", f"call dword ptr [{G.FPTR:#x}]"],
            [f"{p}a:", "add esi, 3", "ret", f"{p}b:", "mov edi, cs", "pushfd", "pop edx", "ret"])


@feature("code_read", causes=(14,))
def _code_read(rng, p):
    return ["push ecx", "push esi", f"mov esi, {G.LOAD:#x}", "mov ecx, fz_end", f"sub ecx, {G.LOAD:#x}",
            "shr ecx, 2", "xor edx, edx", f"{p}loop:", "add edx, dword ptr [esi]", "rol edx, 1",
            "add esi, 4", "dec ecx", f"jnz {p}loop", "pop esi", "pop ecx"]


# Sites a jump patch starts at (and whether they push), and the fillers the jump
# then covers: one `ecx` increment per line, so the loops below are bounded.
INTERIOR_SITES = (("pushfd", True), ("mov ebx, cs", False), ("mov bx, ss", False), ("smsw ebx", False))
INTERIOR_FILLS = (["inc ecx"] * 4, ["add ecx, 1", "inc ecx"], ["inc ecx", "add ecx, 1"],
                  ["lea ecx, [ecx + 1]", "inc ecx", "inc ecx"])


@feature("patch_interior", causes=(11, 12))
def _patch_interior(rng, p):
    """Control reaching the bytes a jump patch covers after the patch is in place:
    a computed jump to the second covered instruction, a direct jump from code
    found later (behind `jmp eax`), a fault inside the covered instructions whose
    handler resumes at the next one, a jump into the middle of a covered instruction."""
    site, pushes = rng.choice(INTERIOR_SITES)
    fill = list(rng.choice(INTERIOR_FILLS))
    pop, push = (["pop edi"], ["pushfd"]) if pushes else ([], [])
    k = rng.randrange(4)
    if k == 2:
        return [_resume(p), f"{p}p:", site, ".byte 0xd4, 0x00", f"{p}r:", *fill, *pop]   # aam 0: #DE
    if k == 3:
        # from t + 1 the bytes of `mov edx, 0x41414141` run as four `inc ecx`
        return ["xor ecx, ecx", f"mov eax, {p}t + 1", f"{p}p:", site, f"{p}t:", "mov edx, 0x41414141",
                *pop, "cmp ecx, 4", f"jae {p}d", *push, "jmp eax", f"{p}d:"]
    n = 2 * len(fill)
    target = "eax" if k == 0 else "esi"
    body = ["xor ecx, ecx", f"mov {target}, {p}t" if k == 0 else f"mov esi, {p}f", f"{p}p:", site,
            f"{p}t:", *fill, *pop, f"cmp ecx, {n}", f"jae {p}d", *push, f"jmp {target}", f"{p}d:"]
    if k == 0:
        return body
    return body, [f"{p}f:", f"jmp {p}t"]


HYPER_OFFSETS = (0x0, 0x4, 0x1000, 0x1800, 0x2000, 0x12000, 0x20000, 0x3FFFFC, -0x4, 0x400000)


@feature("hyper")
def _hyper(rng, p):
    addr = (DEFAULT_HYPER_BASE + rng.choice(HYPER_OFFSETS) + rng.randrange(0, 0x100, 4)) & 0xFFFFFFFF
    k = rng.randrange(3)
    if k == 0:
        return [f"mov eax, dword ptr [{addr:#x}]"]
    if k == 1:
        return [f"mov dword ptr [{addr:#x}], {rng.getrandbits(32):#x}"]
    return ["push ecx", "push edi", "push esi", f"mov edi, {addr:#x}", f"mov esi, {G.SCRATCH:#x}",
            "mov ecx, 4", ".byte 0xf3, 0xa5", "pop esi", "pop edi", "pop ecx"]


# Paging (issue 16): a statement turns paging on over tables of its own, works
# through an alias, faults on a not-present and a read-only page, remaps with
# invlpg or a CR3 reload, and turns paging off again.  The tables live on data
# pages (guest.py's DATA region never holds code); the identity 4 MiB page keeps
# code, stack, GDT and IDT where the prelude put them.
PAGE_DIR = 0x190000
PAGE_TABLE = 0x191000
ALIAS = 0x40000000          # 4 KiB pages through PAGE_TABLE
ALIAS_TARGETS = (G.DATA, G.DATA + 0x1000, G.DATA + 0x2000)


@feature("paging")
def _paging(rng, p):
    pte = PAGE_TABLE
    body = ["mov eax, cr4", "or eax, 0x10", "mov cr4, eax",                   # CR4.PSE
            f"mov dword ptr [{PAGE_DIR:#x}], 0x83",                             # 0-4 MiB, one large page
            f"mov dword ptr [{PAGE_DIR + (ALIAS >> 22) * 4:#x}], {PAGE_TABLE | 7:#x}",
            f"mov dword ptr [{pte:#x}], {rng.choice(ALIAS_TARGETS) | 3:#x}",   # alias page 0: writable
            f"mov dword ptr [{pte + 4:#x}], {rng.choice(ALIAS_TARGETS) | 1:#x}",  # page 1: read-only
            f"mov dword ptr [{pte + 8:#x}], 0",                                 # page 2: not present
            f"mov eax, {PAGE_DIR:#x}", "mov cr3, eax"]
    wp = rng.random() < 0.5
    body += ["mov eax, cr0", f"or eax, {0x80010000 if wp else 0x80000000:#x}", "mov cr0, eax"]
    for k in range(rng.randrange(2, 6)):
        op = rng.randrange(6)
        off = rng.randrange(0, 0x400, 4)
        r = rng.choice(("ebx", "ecx", "edx", "esi", "edi"))
        if op == 0:
            body += [f"mov {r}, dword ptr [{ALIAS + off:#x}]"]
        elif op == 1:
            body += [f"mov dword ptr [{ALIAS + off:#x}], {rng.getrandbits(32):#x}",
                     f"add {r}, dword ptr [{ALIAS + off:#x}]"]
        elif op == 2:           # not present, or a store to the read-only page (a fault with WP)
            addr = ALIAS + rng.choice((0x2000, 0x1000)) + off
            access = f"mov {r}, dword ptr [{addr:#x}]" if addr >= ALIAS + 0x2000 or rng.random() < 0.5 \
                else f"mov dword ptr [{addr:#x}], {r}"
            body += [_resume(p, f"r{k}"), access, f"{p}r{k}:", f"mov {r}, cr2"]
        elif op == 3:           # remap page 0, then invlpg or a CR3 reload
            body += [f"mov dword ptr [{pte:#x}], {rng.choice(ALIAS_TARGETS) | 3:#x}",
                     f"invlpg byte ptr [{ALIAS:#x}]" if rng.random() < 0.5 else "mov eax, cr3\nmov cr3, eax",
                     f"mov {r}, dword ptr [{ALIAS + off:#x}]"]
        elif op == 4:           # the tables' accessed and dirty bits as the guest sees them
            body += [f"mov {r}, dword ptr [{pte + 4 * rng.randrange(2):#x}]",
                     f"xor {r}, dword ptr [{PAGE_DIR + (ALIAS >> 22) * 4:#x}]"]
        else:
            body += [f"mov {r}, cr3", "mov eax, cr0", f"xor {r}, eax"]
    body += ["mov eax, cr0", "and eax, 0x7ffeffff", "mov cr0, eax"]
    return body


# Instruction breakpoints (DR0-DR3, DR7; runtime/breakpoints.py): a statement
# arms 1-4 debug registers on its own labelled instructions -- an ALU line, the
# instructions bt patches and the ones a jump patch covers, the instruction
# after `mov ss`/`pop ss` (no #DB there), a jump target, a faulting ud2/int3 --
# and runs them 1-3 times; the #DB handler (guest.py `fz_db`) folds DR6 and the
# EIP and returns with RF set.  Some registers are left disabled (an execute one
# still sets its DR6 bit when an enabled one at its address hits), some are
# data breakpoints (R/W 01 or 11) always left disabled: trap and bt do not model
# data breakpoints (docs/fidelity.md "Debug registers"), so an enabled one would
# be a known gap, not a finding.  DR7 may be toggled between rounds and turned
# off at the end.
DR7_FIXED = 0x400           # DR7 bit 10 reads as 1
DR7_ENABLES = (0b01, 0b10, 0b11)   # L, G, both


def _bp_alu(rng) -> list[str]:
    """An ALU line that leaves ecx (the round counter) and esp alone."""
    while True:
        line = _alu_line(rng)
        if not any(r in line for r in ("ecx", " cl", "cx", "esp")):
            return [line]


def _bp_site(rng, p: str, k: int) -> list[str]:
    """Instructions with the label `{p}b{k}` on one of them."""
    lab = f"{p}b{k}:"
    c = rng.randrange(9)
    if c == 0:
        return [lab, *_bp_alu(rng)]
    if c == 1:                  # pushfd: a jump patch under bt; the pop is covered
        return rng.choice(([lab, "pushfd", "pop ebx"], ["pushfd", lab, "pop ebx"]))
    if c == 2:                  # more patch sites; the add after one is covered
        site = rng.choice(("mov ebx, cs", "mov bx, ss", "smsw ebx"))
        return rng.choice(([lab, site, "add ebx, 1"], [site, lab, "add ebx, 1"]))
    if c == 3:                  # mov ss: the breakpoint after it never fires
        return rng.choice((["mov eax, ss", "mov ss, eax", lab, "add ebx, 3"],
                           ["mov eax, ss", lab, "mov ss, eax", "add ebx, 3"]))
    if c == 4:                  # push ss; pop ss
        return [".byte 0x16", ".byte 0x17", lab, "inc ebx"]
    if c == 5:                  # a jump target
        return [f"jmp {p}b{k}", "ud2", lab, "inc ebx"]
    if c == 6:                  # #DB first, then (RF set) the instruction's own exception
        return [_resume(p, f"b{k}r"), lab, rng.choice(("ud2", "int3")), f"{p}b{k}r:"]
    if c == 7:
        return [lab, rng.choice(("cli", "in al, 0x21", "nop", "xor eax, eax"))]
    return [lab, rng.choice(("mov edx, dr6", "mov edx, dr7"))]


@feature("breakpoints")
def _breakpoints(rng, p):
    n = rng.randrange(2, 6)
    course = [line for k in range(n) for line in _bp_site(rng, p, k)]
    labels = [f"{p}b{k}" for k in range(n)]
    dr7 = DR7_FIXED | rng.choice((0, 0x100, 0x200, 0x300))     # LE/GE: no effect, kept
    setup, armed, chosen = [], 0, []
    for reg in rng.sample(range(4), rng.randrange(1, 5)):
        if rng.random() < 0.15:                 # a data breakpoint, disabled
            rw, ln = rng.choice((1, 3)), rng.choice((0, 1, 3))
            addr = f"{G.SCRATCH + rng.randrange(0, 0x40, 4):#x}"
            dr7 |= (rw | ln << 2) << (16 + 4 * reg)
        else:
            addr = rng.choice(chosen) if chosen and rng.random() < 0.3 else rng.choice(labels)
            chosen.append(addr)
            dr7 |= (0 if rng.random() < 0.2 else rng.choice(DR7_ENABLES)) << (2 * reg)
            armed |= 3 << (2 * reg)
        setup += [f"mov eax, {addr}", f"mov dr{reg}, eax"]
    setup += [f"mov eax, {dr7:#x}", "mov dr7, eax"]
    toggle = rng.getrandbits(8) & armed if rng.random() < 0.5 else 0     # never a data one
    rounds = ["mov eax, dr7", f"xor eax, {toggle:#x}", "mov dr7, eax"] if toggle else []
    body = ["push ecx", *setup, f"mov ecx, {rng.randrange(1, 4)}", f"{p}loop:", *course, *rounds,
            "dec ecx", f"jnz {p}loop", "pop ecx"]
    if rng.random() < 0.4:
        body += [f"mov eax, {DR7_FIXED:#x}", "mov dr7, eax"]
    if rng.random() < 0.3:
        body += ["mov esi, dr6"]
    return body


# Atomics (fidelity of the clock's cmpxchg8b sync sites): Unicorn 2.1.4
# translates cmpxchg8b without writing the lazy flags back first, so the
# instruction clock hooks every cmpxchg8b site (runtime/clock.py
# `_hook_fix_sites`).  Each statement sets flags with an ALU line right before
# the read-modify-write, so lazy flags are live across it, and reads EFLAGS
# right after (pushfd), so a flags bug at that site reaches the state compared.
def _flag_line(rng) -> str:
    """A flag-setting ALU line that leaves eax, ebx, ecx and edx alone (the
    compare operands of the instruction after it)."""
    op = rng.choice(("add", "sub", "and", "or", "xor", "adc", "sbb", "cmp", "test", "imul", "shl", "sar"))
    if op in ("shl", "sar"):
        return f"{op} esi, {rng.randrange(1, 32)}"
    return f"{op} {rng.choice(('esi', 'edi'))}, {rng.choice(('esi', 'edi'))}"


def _cx8(rng, mem: str, off: str) -> list[str]:
    """cmpxchg8b on `mem` (a qword at address expression `off`): equal (the
    qword first set to edx:eax) or not equal (left as it is, or one half changed)."""
    lines = [f"mov eax, {rng.getrandbits(32):#x}", f"mov edx, {rng.getrandbits(32):#x}",
             f"mov ebx, {rng.getrandbits(32):#x}", f"mov ecx, {rng.getrandbits(32):#x}"]
    how = rng.randrange(3)
    if how < 2:                  # equal: store edx:eax first (how 1: then spoil one half)
        lines += [f"mov dword ptr [{off}], eax", f"mov dword ptr [{off} + 4], edx"]
        if how == 1:
            lines += [f"xor dword ptr [{off} + {rng.choice((0, 4))}], {1 << rng.randrange(32):#x}"]
    return lines + [_flag_line(rng), f"{'lock ' if rng.random() < 0.3 else ''}cmpxchg8b {mem}"]


def _atomic_line(rng, base: str) -> list[str]:
    """One read-modify-write on a dword at [base + offset] (or pause)."""
    off = f"{base} + {rng.randrange(0, 0x40, 8):#x}"
    mem = f"dword ptr [{off}]"
    r, s = rng.choice(("esi", "edi", "edx")), rng.choice(("esi", "edi", "ecx"))
    lock = "lock " if rng.random() < 0.5 else ""
    k = rng.randrange(6)
    if k == 0:
        return _cx8(rng, f"qword ptr [{off}]", off)
    if k == 1:                   # cmpxchg: eax equal to the dword (half the time) or not
        pre = [f"mov eax, {mem}"] if rng.random() < 0.5 else [f"mov eax, {rng.getrandbits(32):#x}"]
        return pre + [_flag_line(rng), f"{lock}cmpxchg {mem}, {s}"]
    if k == 2:
        return [f"mov {r}, {_imm(rng):#x}", _alu_line(rng), f"{lock}xadd {mem}, {r}"]
    if k == 3:
        op = rng.choice(("add", "or", "and", "xor", "sub", "adc", "sbb", "inc", "dec", "not", "neg"))
        operand = "" if op in ("inc", "dec", "not", "neg") else f", {rng.choice((s, hex(_imm(rng))))}"
        return [_alu_line(rng), f"lock {op} {mem}{operand}"]
    if k == 4:
        return [_alu_line(rng), f"xchg {mem}, {r}"]
    return [_alu_line(rng), "pause"]


def _atomic_course(rng, base: str) -> list[str]:
    lines = []
    for _ in range(rng.randrange(1, 4)):
        lines += _atomic_line(rng, base)
        lines += ["pushfd", f"pop {rng.choice(('esi', 'edi'))}"] if rng.random() < 0.7 else \
                 ["pushfd", f"xor {rng.choice(('esi', 'edi'))}, dword ptr [esp]", "popfd"]
    return lines


@feature("atomics")
def _atomics(rng, p):
    """cmpxchg8b (equal and not equal), cmpxchg, xadd, lock-prefixed
    read-modify-writes, xchg with memory and pause, with live lazy flags
    before and a flag read after; at ring 0, at ring 3, or through a paging
    alias (the `paging` feature's tables)."""
    where = rng.randrange(3)
    if where == 0:
        return _atomic_course(rng, "ebp")
    if where == 1:               # ring 3 (flat ring-3 data: the scratch area is reachable)
        user = _atomic_course(rng, f"{G.SCRATCH + 0x40:#x}")
        return [f"mov dword ptr [{G.SAVED_ESP:#x}], esp", _resume(p, "back"),
                f"push {G.UDATA:#x}", f"push {G.USER_STACK_TOP:#x}", f"push {rng.choice((0x2, 0x202, 0x3002)):#x}",
                f"push {G.UCODE:#x}", f"mov eax, {p}user", "push eax",
                f"mov eax, {G.UDATA:#x}", "mov ds, ax", "mov es, ax", "iretd",
                f"{p}user:", *user, f"int {G.RING3_RETURN_VECTOR:#x}",
                f"{p}back:", f"mov eax, {G.KDATA:#x}", "mov ds, ax", "mov es, ax", "mov fs, ax", "mov gs, ax"]
    # paging on: the writable alias page 0 of PAGE_TABLE maps a data page
    body = ["mov eax, cr4", "or eax, 0x10", "mov cr4, eax",
            f"mov dword ptr [{PAGE_DIR:#x}], 0x83",
            f"mov dword ptr [{PAGE_DIR + (ALIAS >> 22) * 4:#x}], {PAGE_TABLE | 7:#x}",
            f"mov dword ptr [{PAGE_TABLE:#x}], {rng.choice(ALIAS_TARGETS) | 3:#x}",
            f"mov eax, {PAGE_DIR:#x}", "mov cr3, eax",
            "mov eax, cr0", "or eax, 0x80010000", "mov cr0, eax",
            # offsets 0x200-0x3ff: when the alias maps DATA itself, that is the
            # scratch area, not RESUME, STATUS or the exception records
            *_atomic_course(rng, f"{ALIAS + rng.randrange(0x200, 0x400, 0x40):#x}"),
            "mov eax, cr0", "and eax, 0x7ffeffff", "mov cr0, eax"]
    return body
