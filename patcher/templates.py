"""Stub templates: the assembly each patched instruction becomes.

One function per catalog row, registered under the row's name (`@stub("pushfd")`;
the patcher picks the template of a site's row, and bt/catalog.py declares
which rows have one: checked at import time), returning Keystone assembly
text that implements the instruction against the virtual CPU state page.  The
templates name state fields (`S.vflags`), never addresses: `StubContext` turns a
field into an absolute address inside the current hypervisor area, and every
such absolute is found again after assembly and recorded as a fixup
(patcher/stubcache.py), so the area can move.

Rules every template follows (checked by tests/patcher/test_template_semantics.py):
* flag-neutral: the guest's arithmetic flags after the stub equal those after
  the real instruction, OF and AF included;
* flag-free where it can be: the bodies use only instructions that neither read
  nor write the arithmetic flags (mov, movzx, lea, xchg, jecxz/jcxz, table
  lookups), since lahf/seto/sahf force Unicorn (QEMU) to materialise its lazy
  flags and made the stubs 1.6x slower.  pushf(d) corrects the IOPL field of
  what the real pushf(d) pushed with a lea whose constant is assembled for the
  guest's IOPL (`StubContext.iopl`; IOPL_TEMPLATES below); popf(d) and iretd
  may compute with flags because their final real popfd/iretd (or the VMM's
  emulation at their exit) loads every flag anyway.  No template saves the
  flags today;
* exit-free: a template never leaves to the VMM except through
  iretd's documented exits, popf(d)'s when the popped IOPL is not the guest's, the segment loads' and far jump's exit for an
  RPL-1 selector (rare: ring compression's one blind spot, issue 15 cause 6),
  and the SS loads, which always exit (their trap would too);
* the guest memory a stub writes is exactly what the instruction writes: no
  scratch below ESP (a real cli writes nothing; a guest can read below its ESP,
  and with ESP = 0 the write wraps to 0xFFFFFFFC: issue 15).  Scratch lives in
  the state page.  The stack is never switched either: a fault inside a stub is
  delivered on the guest's ESP (runtime/bt.py, _stub_fault).  The state page
  and the tables are reached through DS (a flat kernel data segment assumed).
Keystone quirks (tests/patcher/test_templates.py holds every template to them): `pushfd`/`popfd` spelled out, `push cs`
never used (it assembles with a 0x66 prefix), `;` separates statements.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from bt.catalog import check_registry, prefix_info
from bt.hyper_layout import FIELDS, RPL1_BYTE, SELECTOR_VIEW, STATE
from bt.x86 import NT_BIT, VM_BIT

TEMPLATES: dict[str, Callable[["StubContext", "Insn"], str]] = {}

# Exit instruction inside stubs: `hlt` faults (#GP) at CPL 1; the VMM recognises a
# #GP whose EIP lies in the stub cache and looks the address up in the patch's
# exit table.
EXIT = "hlt"


# Rows whose template translates only the 32-bit form: a 0x66-prefixed
# instruction of these rows has no template (the patcher refuses the jump).
NO_16BIT_FORM: set[str] = set()


def stub(*names: str, opsize16: bool = True):
    def register(fn):
        for n in names:
            if n in TEMPLATES:
                raise ValueError(f"two stub templates for {n}")
            TEMPLATES[n] = fn
            if not opsize16:
                NO_16BIT_FORM.add(n)
        return fn
    return register


def template_for(row_name: str, data: bytes):
    """The template translating this instruction of catalog row `row_name`, or None."""
    fn = TEMPLATES.get(row_name)
    if fn is None or (row_name in NO_16BIT_FORM and _opsize16(data)):
        return None
    return fn


def _opsize16(data: bytes) -> bool:
    return prefix_info(data)[1]


@dataclass(frozen=True)
class Insn:
    """The guest instruction a template translates (from the scanner's CFG)."""

    addr: int
    size: int
    mnemonic: str
    op_str: str
    data: bytes


class StubContext:
    def __init__(self, state_addr: int, label: str, iopl: int = 0):
        self.state_addr = state_addr
        self.hyper_base = state_addr - STATE
        self.selector_table = self.hyper_base + SELECTOR_VIEW
        self.label = label
        # The guest IOPL the IOPL_TEMPLATES are assembled for (0-3).
        self.iopl = iopl
        self._n = 0

    def for_iopl(self, iopl: int, label: str | None = None) -> "StubContext":
        """The same context for another guest IOPL (the label counter restarts:
        each template is assembled on its own)."""
        return StubContext(self.state_addr, self.label if label is None else label, iopl)

    def field(self, name: str, plus: int = 0) -> str:
        return f"dword ptr [{self.state_addr + FIELDS[name][0] + plus:#x}]"

    def addr(self, name: str, plus: int = 0) -> int:
        return self.state_addr + FIELDS[name][0] + plus

    def table(self, region: int) -> int:
        """The absolute address of a hypervisor-area region (a lookup table)."""
        return self.hyper_base + region

    def local(self, what: str) -> str:
        self._n += 1
        return f"{self.label}_{what}{self._n}"


_REGS32 = ("eax", "ecx", "edx", "ebx", "esi", "edi")


def free_register(*operand_texts: str) -> str:
    """A general register the operands do not mention (to use as scratch)."""
    used = " ".join(operand_texts)
    for r in _REGS32:
        r16 = r[1:]
        r8 = (r[1] + "l") if r in ("eax", "ecx", "edx", "ebx") else None
        if not re.search(rf"\b({r}|{r16}{'|' + r8 if r8 else ''})\b", used):
            return r
    raise ValueError("no free register")


def _mem_operand(op_str: str) -> str:
    """The memory operand of a one-operand instruction, without the size keyword."""
    return re.sub(r"^(?:[a-z]+ )?ptr ", "", op_str.strip())


# -- the flags: pushf(d), popf(d) ----------------------------------------------------
# The guest's IF is the real IF, and the real IOPL is 1 at CPL 1 (docs/fidelity.md,
# "IF in the real EFLAGS"): what pushf(d) pushes at CPL 1 differs from what the
# guest's pushf(d) pushes at CPL 0 in the IOPL field alone, and by a constant
# while the guest's IOPL stays what it is.  So the flag templates are assembled
# for one guest IOPL (`StubContext.iopl`) and touch neither the state page nor
# the hypervisor area's tables (each such access is a protection event, ~45 ns
# with Unicorn's state restore: docs/benchmarks.md, "Flag stubs without
# state-page accesses").  When the guest's IOPL changes, the VMM rewrites the
# bytes that depend on it in every such stub (`IOPL_TEMPLATES`; patcher/patches.py
# `Patcher.set_iopl`): their shape, and so their length, is the same for every
# IOPL.  Flag behaviour of every instruction used here is pinned by
# tests/runtime/test_flagstub_facts.py.
IOPL_TEMPLATES = frozenset({"pushfd", "popfd", "iretd"})


def _iopl_delta(v: int) -> str:
    """`lea eax, [eax + disp32]` adding (v - 1) to the IOPL field of EAX (real
    IOPL 1 -> the guest's v; no carry leaves bits 12-13 for v in 0..3), as raw
    bytes: Keystone picks a shorter form for 0, and every IOPL must give the
    same length."""
    return f".byte 0x8d, 0x80; .long {((v - 1) << 12) & 0xFFFFFFFF:#x}"


# The first five bytes of a pushf(d) stub: a 5-byte nop while no stub can run
# at CPL 3 with a real IOPL other than 1, else a `jmp rel32` to the template's
# ring-3 tail (`RING3_TAILS`).  Same length either way: the patcher switches
# them in place (patcher/patches.py `Patcher.set_ring3_tests`).
RING3_ENTRY = ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00"
RING3_ENTRY_SIZE = 5
# Row -> tail(s, insn, back, done): code placed after the stub's jump back to
# the guest, entered through RING3_ENTRY; `back` names the template's code
# after the entry, `done` its end (labels or absolute addresses).
RING3_TAILS: dict[str, Callable[["StubContext", "Insn", str, str], str]] = {}


@stub("pushfd")
def _pushf(s: StubContext, i: Insn) -> str:
    # Push the real flags into the slot the instruction writes (and nowhere
    # else), then turn the real IOPL (1 at CPL 1) in the pushed copy into the
    # guest's with a lea between two xchg: no flag read or written, no access
    # outside the slot, no state page.  Keystone's `pushf` is the 16-bit form
    # (66 9c): it writes the low word only, and bits 31:16 of the real EFLAGS
    # (AC, ID) stay as they are, as the CPU leaves them; the IOPL field is in
    # that word.  At CPL 3 the real IOPL is the guest's once the VMM has
    # written the real flags there: the entry then leads to the ring-3 tail.
    push = "pushf" if i.mnemonic == "pushf" else "pushfd"
    acc = "ax, word ptr" if i.mnemonic == "pushf" else "eax, dword ptr"
    return f"{RING3_ENTRY}; {push}; xchg {acc} [esp]; {_iopl_delta(s.iopl)}; xchg {acc} [esp]"


def _pushf_ring3_tail(s: StubContext, i: Insn, back: str, done: str) -> str:
    """Back to the template when the stub runs at CPL 1; at CPL 3 the plain
    push (the real flags are the guest's there).  The CPL test changes only
    CX and no flag: CX = CS << 14 (RPL in bits 14-15; lea shifts without
    touching flags), plus 0x4000, is 0 exactly for RPL 3, tested with jcxz; CX
    is parked in the slot the push writes (`push cx` writes its top 2 bytes)."""
    ring3 = s.local("ring3")
    push = "pushf" if i.mnemonic == "pushf" else "pushfd"
    return (f"push cx; mov cx, cs; lea cx, [ecx*8]; lea cx, [ecx*8]; lea cx, [ecx*8]; lea cx, [ecx*8]; "
            f"lea cx, [ecx*4]; lea cx, [ecx + 0x4000]; jcxz {ring3}; pop cx; jmp {back}; "
            f"{ring3}: pop cx; {push}; jmp {done}")


RING3_TAILS["pushfd"] = _pushf_ring3_tail


def _iopl_check(s: StubContext, byte: str, bad: str, good: str | None = None) -> str:
    """Flag-clobbering test of the IOPL field in bits 4-5 of `byte` against the
    guest's (s.iopl): to `bad` when it differs.  With `good`, the second test
    jumps there when it matches and falls through otherwise (so an exit can
    follow it).  The jcc opcodes are the IOPL-dependent bytes."""
    v = s.iopl
    first = f"test {byte}, 0x10; {'jz' if v & 1 else 'jnz'} {bad}; test {byte}, 0x20; "
    if good is None:
        return first + f"{'jz' if v & 2 else 'jnz'} {bad}"
    return first + f"{'jnz' if v & 2 else 'jz'} {good}"


@stub("popfd")
def _popf(s: StubContext, i: Insn) -> str:
    # The real popf(d) at CPL 1 (IOPL 1) sets IF as the guest's does but
    # silently keeps IOPL: it runs natively while the popped IOPL is the
    # guest's, and exits (the VMM emulates it: a new IOPL, and the flag stubs
    # rewritten for it) when it is not.  At CPL 3 the real IOPL is the guest's
    # and a native popf(d) keeps it as the CPU does.  The tests clobber
    # arithmetic flags: the popf, and the emulated one at the exit, load them
    # all.  The popf is the template's last instruction: it ends its translated
    # block, and the next block starts where the next guest instruction's stub
    # code starts, the one place an interrupt it enabled may be taken
    # (runtime/_clock.c, "Interrupt window").
    pop = "popf" if i.mnemonic == "popf" else "popfd"
    out, ok = s.local("exit"), s.local("ok")
    return f"{_iopl_check(s, 'byte ptr [esp + 1]', out, ok)}; {out}: {EXIT}; {ok}: {pop}"


def _mentions(text: str, reg: str) -> bool:
    """Does the instruction text name the 32-bit register or a part of it?"""
    parts = {reg, reg[1:]} | ({reg[1] + "l", reg[1] + "h"} if reg in ("eax", "ecx", "edx", "ebx") else set())
    return re.search(rf"\b({'|'.join(sorted(parts))})\b", text) is not None


def shared_register(before: str) -> str:
    """The register a template hands over to the next (share_scratch): the one
    its last step restores from the scratch word."""
    return before.split(";")[-1].split()[1].rstrip(",")


def share_scratch(s: StubContext, before: str, after: str) -> tuple[str, str] | None:
    """Two templates back to back in one stub: when the first ends by restoring
    a register from the scratch word and the second starts by saving the same
    register there, drop both moves (the register is scratch in both; the second
    restores the guest's value at its end).  Each move is a protection event
    (docs/benchmarks.md, "bt's speed after the fidelity work").  Only when the
    second template overwrites the register before reading it (after
    instructions that do not touch it), so the guest's value is never needed in
    between.  Returns the two texts without the moves, or None."""
    steps_b = [x.strip() for x in before.split(";")]
    steps_a = [x.strip() for x in after.split(";")]
    scratch = s.field("scratch")
    m = re.fullmatch(rf"mov (e[a-d]x|e[sd]i), {re.escape(scratch)}", steps_b[-1])
    if m is None or len(steps_b) < 2 or not steps_a or steps_a[0] != f"mov {scratch}, {m.group(1)}":
        return None
    reg = m.group(1)
    for step in steps_a[1:]:
        if step in ("pushfd", "pushf"):
            continue                  # touch neither the register nor the scratch word
        w = re.fullmatch(r"(?:mov|movzx) (\w+), (.*)", step)
        if w is not None and w.group(1) == reg and not _mentions(w.group(2), reg) \
                and "scratch" not in w.group(2) and scratch not in w.group(2):
            return "; ".join(steps_b[:-1]), "; ".join(steps_a[1:])
        return None
    return None



# -- descriptor-table and machine-status reads -----------------------------------
def _table_store(s: StubContext, i: Insn, field: str) -> str:
    mem = _mem_operand(i.op_str)
    r = free_register(mem)
    seg = ""
    m = re.match(r"^(\w\w):(.*)$", mem)
    if m:
        seg, mem = m.group(1) + ":", m.group(2)
    r16 = r[1:]
    # With a 0x66 prefix the CPU (Unicorn at CPL 0) stores a 24-bit base: the
    # base's top byte is written as 0.
    o16 = 0x66 in i.data[:i.data.index(0x0F)]
    top = f"mov byte ptr {seg}{mem_plus(mem, 5)}, 0; " if o16 else ""
    # lea ignores the segment; the stores apply it (flat data segments assumed).
    return (f"mov {s.field('scratch')}, {r}; mov {r}, {s.field(field, 2)}; "
            f"mov dword ptr {seg}{mem_plus(mem, 2)}, {r}; {top}"
            f"mov {r16}, word ptr [{s.addr(field):#x}]; mov word ptr {seg}{mem}, {r16}; "
            f"mov {r}, {s.field('scratch')}")


def mem_plus(mem: str, n: int) -> str:
    """`[ebx + 4]` -> `[ebx + 4 + n]`."""
    return mem[:-1] + f" + {n}]"


@stub("sgdt")
def _sgdt(s, i):
    return _table_store(s, i, "gdtr")


@stub("sidt")
def _sidt(s, i):
    return _table_store(s, i, "idtr")


def _word_source(s: StubContext, i: Insn, load: str) -> str:
    """sldt/str/smsw: store a 16-bit value (register forms: 32-bit, zero-extended)."""
    op = i.op_str.strip()
    if "[" not in op:
        reg = op
        if len(reg) == 3:   # 32-bit register: zero-extended
            return f"movzx {reg}, word ptr [{load}]"
        return f"mov {reg}, word ptr [{load}]"
    mem = _mem_operand(op)
    r = free_register(mem)
    return (f"mov {s.field('scratch')}, {r}; mov {r[1:]}, word ptr [{load}]; "
            f"mov word ptr {mem}, {r[1:]}; mov {r}, {s.field('scratch')}")


@stub("sldt")
def _sldt(s, i):
    return _word_source(s, i, f"{s.addr('ldtr'):#x}")


@stub("str")
def _str(s, i):
    return _word_source(s, i, f"{s.addr('tr'):#x}")


@stub("smsw")
def _smsw(s, i):
    op = i.op_str.strip()
    if "[" not in op:
        # smsw r32 writes CR0 whole, as the CPU does (emulate completes
        # Unicorn's 16-bit write: runtime/smswfix.py); smsw r16 the low word.
        if len(op) == 3:
            return f"mov {op}, dword ptr [{s.addr('cr0'):#x}]"
        return f"mov {op}, word ptr [{s.addr('cr0'):#x}]"
    return _word_source(s, i, f"{s.addr('cr0'):#x}")


# -- selectors as the guest sees them (RPL 0 in ring 1) ---------------------------
def _guest_view(reg: str, seg: str, s: StubContext) -> str:
    """reg = the guest's view of a segment register, through the hypervisor's
    selector table: flag-neutral and without stack scratch."""
    return f"mov {reg}, {seg}; movzx {reg}, word ptr [{s.selector_table:#x} + {reg}*2]"


@stub("mov_from_cs", "mov_from_ss")
def _mov_from_seg(s: StubContext, i: Insn) -> str:
    dst, seg = [x.strip() for x in i.op_str.split(",")]
    if "[" in dst:
        mem = _mem_operand(dst)
        r = free_register(mem)
        return (f"mov {s.field('scratch')}, {r}; {_guest_view(r, seg, s)}; "
                f"mov word ptr {mem}, {r[1:]}; mov {r}, {s.field('scratch')}")
    if len(dst) == 3:                  # mov r32, seg: zero-extended
        return _guest_view(dst, seg, s)
    # mov r16, seg (0x66): bits 31:16 of the register are kept, as the CPU does;
    # the view is computed in the full register and only its low word merged.
    reg = "e" + dst
    return (f"mov {s.field('scratch')}, {reg}; {_guest_view(reg, seg, s)}; "
            f"mov word ptr [{s.addr('scratch'):#x}], {dst}; mov {reg}, {s.field('scratch')}")


@stub("push_cs", "push_ss", opsize16=False)
def _push_seg(s: StubContext, i: Insn) -> str:
    if i.data[0] == 0x66:
        raise NotImplementedError("16-bit push of a segment register")
    seg = "cs" if i.data[-1] == 0x0E else "ss"
    # the slot the native push writes, and nothing below it
    return f"push eax; {_guest_view('eax', seg, s)}; xchg eax, dword ptr [esp]"


# -- segment loads and far jumps (issue 15, cause 6) ------------------------------------
# At CPL 1 the CPU accepts a kernel selector with RPL 1 where the guest's CPL 0
# raises #GP (ring compression made the kernel's descriptors DPL 1).  Every other
# RPL gets the guest's answer natively, so the stub looks at the selector's low
# byte through RPL1_BYTE (flag-free: a table load and jecxz) and exits only for
# RPL 1: the VMM then loads or faults as the CPU at the guest's CPL does
# (runtime/segments.py).  Otherwise the guest's own instruction bytes run
# (Keystone would turn `pop ds` or `ljmp` into their 16-bit forms).
def _native(i: Insn) -> str:
    return ".byte " + ", ".join(f"{b:#04x}" for b in i.data)


def _rpl1_exit(s: StubContext, selector_low_byte: str) -> str:
    """Exit when the selector whose low byte `selector_low_byte` names (a byte
    memory operand, or a 16-bit register) has RPL 1; ECX is the guest's at the
    exit and after."""
    native = s.local("native")
    if "[" in selector_low_byte:
        load = f"movzx ecx, {selector_low_byte}"
    else:
        load = f"movzx ecx, {selector_low_byte}; movzx ecx, cl"
    return (f"mov {s.field('scratch')}, ecx; {load}; "
            f"movzx ecx, byte ptr [{s.table(RPL1_BYTE):#x} + ecx]; jecxz {native}; "
            f"mov ecx, {s.field('scratch')}; {EXIT}; "
            f"{native}: mov ecx, {s.field('scratch')}")


def _byte_of(mem_operand: str, plus: int = 0) -> str:
    """`word ptr fs:[ebx + 4]` -> `byte ptr fs:[ebx + 4 + plus]`."""
    mem = _mem_operand(mem_operand)
    return "byte ptr " + (mem_plus(mem, plus) if plus else mem)


@stub("mov_to_sreg")
def _mov_to_sreg(s: StubContext, i: Insn) -> str:
    src = i.op_str.split(",", 1)[1].strip()
    low = _byte_of(src) if "[" in src else (src[1:] if len(src) == 3 else src)
    return f"{_rpl1_exit(s, low)}; {_native(i)}"


@stub("pop_sreg")
def _pop_sreg(s: StubContext, i: Insn) -> str:
    return f"{_rpl1_exit(s, 'byte ptr [esp]')}; {_native(i)}"


@stub("jmp_far")
def _jmp_far(s: StubContext, i: Insn) -> str:
    n, opsize16, _ = prefix_info(i.data)
    off_size = 2 if opsize16 else 4
    if i.data[n] == 0xEA:              # ptr16:32: the selector is an immediate
        sel = int.from_bytes(i.data[n + 1 + off_size:n + 3 + off_size], "little")
        return EXIT if sel & 3 == 1 else _native(i)
    # m16:32: the selector follows the offset in memory
    return f"{_rpl1_exit(s, _byte_of(i.op_str, off_size))}; {_native(i)}"


@stub("mov_to_ss", "pop_ss", "lss")
def _load_ss(s: StubContext, i: Insn) -> str:
    # Every SS load needs the VMM: RPL 0 faults at CPL 1 and RPL 1 loads where
    # CPL 0 faults.  Inside a jump patch it costs the one exit its trap would,
    # and the instructions around it stay translated instead of int3-patched.
    return EXIT


# -- returns ----------------------------------------------------------------------
@stub("iretd", opsize16=False)
def _iretd(s: StubContext, i: Insn) -> str:
    """Kernel-to-kernel iretd: load EFLAGS (IF included: CPL 1 <= the real
    IOPL 1) with popfd and leave through an indirect jump (the frame is only
    read: writing RPL 1 into its CS slot would leave a byte below the new ESP
    that the CPU never writes).  That needs the frame's CS to be the current
    one (ring compression: the current CS is the frame's with RPL 1) and the
    frame's IOPL to be the guest's (`s.iopl`: the stub is one of the
    IOPL_TEMPLATES; a native popfd or iretd at CPL 1 keeps the real IOPL);
    any other kernel CS or IOPL exits so the VMM emulates the iretd (kind
    'emulate'), with nothing changed yet.  So does an iretd to ring 3: at CPL 3
    the real EFLAGS are the guest's, IOPL included, which a native iretd at
    CPL 1 cannot load.  So does a frame with VM set: a return to
    virtual-8086 mode, which an iretd at CPL 1 ignores (runtime/v86.py).
    A frame with RPL 1 or 2 runs natively.  An interrupt
    the popfd enables is taken at the iretd's target: the `jmp` after it
    weighs no guest instruction, so the clock's window check waits for the
    target's block (runtime/_clock.c, "Interrupt window")."""
    outer = s.local("outer")
    out = s.local("emul")
    # The exit must leave the guest's arithmetic flags as they were: an
    # emulated iretd that faults (a bad ring-3 frame) delivers them in the
    # exception frame.  lahf/seto save them into scratch3 without touching
    # any flag or the stack; at the exit `add al, 0x7f` sets OF from the saved
    # bit and sahf puts SF ZF AF PF CF back.
    # With NT set the iretd is a return to the previous task (runtime/taskswitch.py),
    # whatever the stack holds: it exits.  EFLAGS.NT can only be read through
    # pushfd; it stores into the frame's own EFLAGS slot (ESP moved above it),
    # which is put back before anything else runs, so memory ends as the CPU's
    # iretd leaves it (tests/patcher/test_template_semantics.py compares it).
    return (f"mov {s.field('scratch')}, eax; lahf; seto al; mov {s.field('scratch3')}, eax; "
            f"mov eax, dword ptr [esp + 8]; mov {s.field('scratch2')}, eax; lea esp, [esp + 12]; pushfd; "
            f"test byte ptr [esp + 1], {NT_BIT >> 8:#x}; mov eax, {s.field('scratch2')}; mov dword ptr [esp], eax; "
            f"lea esp, [esp - 8]; jnz {out}; "
            f"mov eax, dword ptr [esp + 4]; and eax, 3; cmp eax, 3; je {out}; "
            f"mov eax, dword ptr [esp + 8]; test eax, {VM_BIT:#x}; jnz {out}; {_iopl_check(s, 'ah', out)}; "
            f"mov eax, dword ptr [esp + 4]; and eax, 3; jnz {outer}; "
            # eax = the real CS (zero-extended) xor the frame's CS: 1 when they
            # name the same kernel code segment
            f"mov eax, cs; xor ax, word ptr [esp + 4]; cmp eax, 1; jne {out}; "
            f"mov eax, dword ptr [esp]; "
            f"mov {s.field('scratch2')}, eax; mov eax, {s.field('scratch')}; "
            f"lea esp, [esp + 8]; popfd; jmp {s.field('scratch2')}; "
            f"{outer}: mov eax, {s.field('scratch')}; iretd; "
            f"{out}: mov eax, {s.field('scratch3')}; add al, 0x7f; sahf; mov eax, {s.field('scratch')}; {EXIT}")


# Which templates end in control transfer (no jump back to the guest).
TERMINATORS = frozenset({"iretd", "jmp_far"})
# Templates containing an EXIT that means "emulate the original instruction"
# and whose routine decides where the guest goes on (an iretd's frame): such an
# instruction must start its patch.  Every other template's EXIT also means
# "emulate it", and the VMM resumes at the next covered instruction's stub code
# (patcher/patches.py), so they may sit anywhere in a patch: the segment loads'.
EMULATE_EXITS = frozenset({"iretd"})
# Templates whose EXIT fires for an RPL-1 selector (ring compression's blind spot),
# and the SS loads', which always exit.
SELECTOR_EXITS = frozenset({"mov_to_sreg", "pop_sreg", "jmp_far"})
SS_LOADS = frozenset({"mov_to_ss", "pop_ss", "lss"})


check_registry("stub templates", TEMPLATES, lambda row: row.stub)
