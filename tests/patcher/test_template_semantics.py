"""Every stub template, run alone in a bare engine, does what the instruction it
replaces does.

For each template and a set of operand forms, two bare Unicorn engines run:
  * the reference: the original instruction, natively at CPL 0, with the CPU's
    real state set to what the guest believes (IF/IOPL, GDTR/IDTR/LDTR/TR, CR0,
    selectors with RPL 0);
  * the translation: the template's stub at a stub-cache address, at CPL 1
    (ring-compressed selectors, the guest's IF in the real EFLAGS, real IOPL 1),
    with the virtual CPU state page holding the same beliefs, then the jump back
    to the guest.
The guest-visible outcome must match: general registers, ESP, EIP, selectors as
the guest sees them, EFLAGS with the guest's IOPL (vflags) in place of the real
one, the guest memory (stack slots, memory operands; nothing below ESP may
change), and the state page (only vflags and the scratch words may change;
vflags as the instruction left the real IOPL in the reference).  A stub exit (`hlt`) is
allowed only where the templates document one, and the state at the exit must
be what the VMM expects there.

Initial registers, flags, beliefs and memory are random with a fixed seed per
sample and trial, so every run checks the same cases.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

import capstone
import pytest
from unicorn import Uc, UC_ARCH_X86, UC_MODE_32, UC_HOOK_INTR
from unicorn import x86_const as X

from bt.machine import ACCESS_CODE0, ACCESS_CODE3, ACCESS_DATA0, ACCESS_DATA3, descriptor
from bt.catalog import classify_bytes
from patcher.stubcache import assemble
from runtime.smswfix import REG32, smsw_register
from patcher.templates import (EMULATE_EXITS, SELECTOR_EXITS, SS_LOADS, template_for, TEMPLATES,
                               TERMINATORS, Insn, StubContext)
from bt.hyper_layout import (FIELDS, FLAG_TABLES, HYPER_SIZE, REAL_IOPL_CPL1, SELECTOR_VIEW, STATE, STUBS, VFLAGS_MASK,
                             flag_tables, selector_view_table)
from bt.x86 import IF_BIT, IOPL_MASK

_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)

# -- the bare machine ------------------------------------------------------------
RAM = 0x40000
HYPER = 0xFF000000
STATE_ADDR = HYPER + STATE
STUB_ADDR = HYPER + STUBS
GUEST = 0x10000                 # the instruction's site
KERNEL_TARGET = GUEST + 0x80    # where a kernel iretd frame returns
USER_TARGET = GUEST + 0x100     # where a user iretd frame returns
GUEST_GDT = 0x500               # the GDT the guest built (the reference's real one)
REAL_GDT = 0x800                # the translation's ring-compressed GDT
TRAMPOLINE = 0x1000             # translation: ring 0 -> ring 1 entry
RING0_STACK = 0x1F00
FS_BASE = 0x20000               # FS has a non-zero base: segment overrides matter
DATA = ((0x2000, 0x8000), (FS_BASE + 0x2000, FS_BASE + 0x8000))
COMPARED = ((GUEST_GDT, GUEST_GDT + 0x100),) + DATA
GUEST_ESP = 0x6000
USER_ESP = 0x7000
SCRATCH_BELOW_ESP = 0           # bytes below ESP a stub may use as scratch: none (issue 15)

ACCESS_CODE1, ACCESS_DATA1 = 0xBA, 0xB2
# guest selectors (RPL 0); the translation runs them with RPL 1
KCODE, KDATA, UCODE, UDATA, FSEL = 0x08, 0x10, 0x1B, 0x23, 0x38
RING0_CODE, RING0_DATA = 0x28, 0x30      # translation only: the trampoline's
FLAT = 0xFFFFF


def _gdt(kernel_code: int, kernel_data: int, ring0: bool) -> bytes:
    """Descriptors with the accessed bit already set, so segment loads while
    setting up the reference do not write the guest's GDT."""
    out = bytearray(0x40)
    for sel, base, acc in ((KCODE, 0, kernel_code), (KDATA, 0, kernel_data), (UCODE, 0, ACCESS_CODE3),
                           (UDATA, 0, ACCESS_DATA3), (FSEL, FS_BASE, kernel_data)):
        out[sel & ~3:(sel & ~3) + 8] = descriptor(base, FLAT, acc | 1)
    if ring0:
        out[RING0_CODE:RING0_CODE + 8] = descriptor(0, FLAT, ACCESS_CODE0 | 1)
        out[RING0_DATA:RING0_DATA + 8] = descriptor(0, FLAT, ACCESS_DATA0 | 1)
    return bytes(out)


REF_GDT_BYTES = _gdt(ACCESS_CODE0, ACCESS_DATA0, ring0=False)
REAL_GDT_BYTES = _gdt(ACCESS_CODE1, ACCESS_DATA1, ring0=True)
VIEW = selector_view_table()
FLAG_TABLE_BYTES = flag_tables()
SEGS = {"cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS, "ds": X.UC_X86_REG_DS,
        "es": X.UC_X86_REG_ES, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS}
GPRS = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in
        ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")}

# EFLAGS bits the guest may hold when the instruction runs (never TF, NT, RF,
# VM, VIF, VIP: those would trap, switch tasks or are not popf's to set).
ARITH = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x400 | 0x800
FREE_FLAGS = ARITH | (1 << 18) | (1 << 21)          # + AC, ID


GUEST_SEGS = {"cs": KCODE, "ss": KDATA, "ds": KDATA, "es": KDATA, "fs": FSEL, "gs": KDATA}


def guest_view(sel: int) -> int:
    return sel & ~3 if sel & 3 == 1 else sel


# -- samples: every template key, several operand forms ------------------------
@dataclass(frozen=True)
class Sample:
    hex: str
    regs: dict = field(default_factory=dict)      # address registers, fixed
    frame: str | None = None                      # what the stack holds at ESP
    sel: int | None = None                        # the selector a segment load or far jump names
    mem: dict = field(default_factory=dict)       # address -> bytes placed in guest memory

    @property
    def code(self) -> bytes:
        return bytes.fromhex(self.hex)


SAMPLES: dict[str, list[Sample]] = {
    "pushfd": [Sample("9c"), Sample("669c")],                        # pushfd, pushf
    "popfd": [Sample("9d", frame="flags"), Sample("669d", frame="flags")],
    "sgdt": [Sample("0f014304", {"ebx": 0x3000}),                    # [ebx + 4]
             Sample("640f014310", {"ebx": 0x3100}),                  # fs:[ebx + 0x10]
             Sample("0f01447304", {"ebx": 0x3200, "esi": 0x11}),     # [ebx + esi*2 + 4]
             Sample("0f010500340000"),                               # [0x3400]
             Sample("0f01442408")],                                  # [esp + 8]
    "sidt": [Sample("0f0108", {"eax": 0x3000}),                      # [eax]
             Sample("640f014b04", {"ebx": 0x3100}),                  # fs:[ebx + 4]
             Sample("0f014c2408"),                                   # [esp + 8]
             Sample("660f014b04", {"ebx": 0x3200})],                 # o16 [ebx + 4]
    "sldt": [Sample("0f00c0"), Sample("660f00c2"),                   # eax, dx
             Sample("0f0007", {"edi": 0x3000}),                      # [edi]
             Sample("640f004702", {"edi": 0x3100}),                  # fs:[edi + 2]
             Sample("660f0007", {"edi": 0x3200})],                   # o16 [edi]
    "str": [Sample("0f00c8"), Sample("660f00c8"), Sample("0f00ce"),  # eax, ax, esi
            Sample("0f0009", {"ecx": 0x3000}),                       # [ecx]
            Sample("640f000b", {"ebx": 0x3100})],                    # fs:[ebx]
    "smsw": [Sample("0f01e0"), Sample("660f01e0"), Sample("0f01e3"),  # eax, ax, ebx
             Sample("0f016308", {"ebx": 0x3000}),                    # [ebx + 8]
             Sample("640f016308", {"ebx": 0x3100})],                 # fs:[ebx + 8]
    "mov_from_cs": [Sample("8cc8"), Sample("668cc8"), Sample("668ccb"),   # eax, ax, bx
                    Sample("8c0b", {"ebx": 0x3000}),                 # [ebx]
                    Sample("648c4b04", {"ebx": 0x3100})],            # fs:[ebx + 4]
    "mov_from_ss": [Sample("8cd0"), Sample("668cd6"),                # eax, si
                    Sample("8c16", {"esi": 0x3000}),                 # [esi]
                    Sample("648c5604", {"esi": 0x3100})],            # fs:[esi + 4]
    "push_cs": [Sample("0e")],
    "push_ss": [Sample("16")],
    "iretd": [Sample("cf", frame="kernel"), Sample("cf", frame="user")],
    # RPL 0 and 3 load natively; RPL 1 (UDATA | 1: DPL 3, legal at CPL 0) exits
    "mov_to_sreg": [Sample("8ed8", {"eax": KDATA}, sel=KDATA),                    # mov ds, eax
                    Sample("668ee3", {"ebx": UDATA}, sel=UDATA),                  # mov fs, bx
                    Sample("8ec1", {"ecx": KDATA}, sel=KDATA),                    # mov es, ecx (the scratch)
                    Sample("8ee6", {"esi": 0}, sel=0),                            # mov fs, esi (null)
                    Sample("8e2b", {"ebx": 0x3000}, sel=UDATA, mem={0x3000: struct.pack("<H", UDATA)}),
                    Sample("648e5b04", {"ebx": 0x3100}, sel=KDATA,                # mov ds, fs:[ebx + 4]
                           mem={FS_BASE + 0x3104: struct.pack("<H", KDATA)}),
                    Sample("8ed8", {"eax": UDATA | 1}, sel=UDATA | 1),            # exits
                    Sample("8e29", {"ecx": 0x3200}, sel=UDATA | 1,                # mov gs, [ecx]: exits
                           mem={0x3200: struct.pack("<H", UDATA | 1)})],
    "pop_sreg": [Sample("1f", frame="selector", sel=KDATA), Sample("0fa9", frame="selector", sel=UDATA),
                 Sample("661f", frame="selector", sel=KDATA), Sample("07", frame="selector", sel=UDATA | 1)],
    "mov_to_ss": [Sample("8ed0", {"eax": KDATA}, sel=KDATA), Sample("8e16", {"esi": 0x3000}, sel=KDATA,
                                                                   mem={0x3000: struct.pack("<H", KDATA)})],
    "pop_ss": [Sample("17", frame="selector", sel=KDATA)],
    "lss": [Sample("0fb23500300000", sel=KDATA, mem={0x3000: struct.pack("<IH", 0x5000, KDATA)})],
    "jmp_far": [Sample("ea" + struct.pack("<IH", GUEST + 7, KCODE).hex(), sel=KCODE),
                Sample("ff2b", {"ebx": 0x3000}, sel=KCODE,                        # ljmp [ebx]
                       mem={0x3000: struct.pack("<IH", GUEST + 2, KCODE)})],
}
TRIALS = 12


def test_every_template_has_samples():
    assert sorted(SAMPLES) == sorted(TEMPLATES)


def _cases():
    for key in sorted(SAMPLES):
        for s in SAMPLES[key]:
            yield pytest.param(key, s, id=f"{key}-{s.hex}" + (f"-{s.frame}" if s.frame else ""))


def decode(sample: Sample) -> Insn:
    ins = next(_CS.disasm(sample.code, GUEST))
    assert ins.size == len(sample.code)
    return Insn(GUEST, ins.size, ins.mnemonic, ins.op_str, sample.code)


# -- one trial: what the guest believes before the instruction -----------------
@dataclass
class Belief:
    regs: dict
    eflags: int                 # as the guest sees it (its own IF/IOPL)
    cr0: int
    gdt_limit: int
    idtr: tuple                 # (base, limit)
    ldtr: int
    tr: int
    memory: dict                # address -> bytes
    irq_pending: int
    state_noise: bytes          # the rest of the state page
    until: int


def _random_flags(rng) -> int:
    return (rng.getrandbits(32) & FREE_FLAGS) | rng.choice((0, IF_BIT)) | (rng.randrange(4) << 12) | 2


def make_belief(sample: Sample, insn: Insn, trial: int) -> Belief:
    rng = random.Random(f"{sample.hex}-{sample.frame}-{trial}")
    regs = {n: rng.getrandbits(32) for n in GPRS}
    regs["esp"] = GUEST_ESP - 4 * rng.randrange(8)
    regs.update(sample.regs)
    memory = {lo: rng.randbytes(hi - lo) for lo, hi in DATA}
    until = GUEST + insn.size
    esp = regs["esp"]
    frame = b""
    if sample.frame == "flags":
        frame = struct.pack("<I", _random_flags(rng))
    elif sample.frame == "kernel":
        until = KERNEL_TARGET
        frame = struct.pack("<III", KERNEL_TARGET, KCODE, _random_flags(rng))
    elif sample.frame == "user":
        until = USER_TARGET
        frame = struct.pack("<IIIII", USER_TARGET, UCODE, _random_flags(rng), USER_ESP, UDATA)
    elif sample.frame == "selector":
        frame = struct.pack("<I", sample.sel | rng.getrandbits(16) << 16)
    for addr, data in sample.mem.items():
        lo = next(lo for lo, hi in DATA if lo <= addr < hi)
        block = bytearray(memory[lo])
        block[addr - lo:addr - lo + len(data)] = data
        memory[lo] = bytes(block)
    if frame:
        stack = bytearray(memory[DATA[0][0]])
        off = esp - DATA[0][0]
        stack[off:off + len(frame)] = frame
        memory[DATA[0][0]] = bytes(stack)
    # CR0 as a protected-mode kernel keeps it (PE, ET, NE), other bits random;
    # the high half too, so a stub that shows more than the low word is seen.
    cr0 = 0x31 | (rng.getrandbits(3) << 1) | rng.choice((0, 1 << 16)) | rng.choice((0, 1 << 18)) \
        | rng.choice((0, 3 << 29))
    return Belief(regs, _random_flags(rng), cr0, rng.choice((0x3F, 0xFF, 0xFFFF)),
                  (rng.getrandbits(32), rng.getrandbits(16)), rng.getrandbits(16), rng.getrandbits(16),
                  memory, rng.choice((0, 1)), rng.randbytes(0x100), until)


# -- running both sides ------------------------------------------------------------
@dataclass
class Outcome:
    regs: dict
    eip: int
    segs: dict                  # as the guest sees them
    eflags: int                 # as the guest sees it
    memory: dict                # compared range start -> bytes
    faults: list
    real_eflags: int = 0
    state: bytes = b""


def _engine() -> tuple[Uc, list]:
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, RAM)
    faults: list = []

    def on_intr(uc, intno, _):
        faults.append((intno, uc.reg_read(X.UC_X86_REG_EIP)))
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    return uc, faults


def _load_guest_memory(uc, b: Belief, insn: Insn) -> None:
    uc.mem_write(GUEST_GDT, REF_GDT_BYTES)
    for addr, data in b.memory.items():
        uc.mem_write(addr, data)
    uc.mem_write(GUEST, insn.data)
    uc.mem_write(KERNEL_TARGET, b"\xf4")     # never reached: emulation stops here
    uc.mem_write(USER_TARGET, b"\xf4")


def _outcome(uc, faults, view) -> dict:
    return dict(regs={n: uc.reg_read(r) for n, r in GPRS.items()},
                eip=uc.reg_read(X.UC_X86_REG_EIP),
                segs={n: view(uc.reg_read(r)) for n, r in SEGS.items()},
                memory={lo: bytes(uc.mem_read(lo, hi - lo)) for lo, hi in COMPARED},
                faults=list(faults), real_eflags=uc.reg_read(X.UC_X86_REG_EFLAGS))


def run_reference(insn: Insn, b: Belief) -> Outcome:
    uc, faults = _engine()
    _load_guest_memory(uc, b, insn)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GUEST_GDT, b.gdt_limit, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, b.idtr[0], b.idtr[1], 0))
    uc.reg_write(X.UC_X86_REG_LDTR, (b.ldtr, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_TR, (b.tr, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_CR0, b.cr0)
    uc.reg_write(X.UC_X86_REG_CS, KCODE)
    for seg, sel in (("ss", KDATA), ("ds", KDATA), ("es", KDATA), ("fs", FSEL), ("gs", KDATA)):
        uc.reg_write(SEGS[seg], sel)
    for n, r in GPRS.items():
        uc.reg_write(r, b.regs[n])
    uc.reg_write(X.UC_X86_REG_EFLAGS, b.eflags)
    reg = smsw_register(insn.data, False)
    if reg is not None:     # emulate completes Unicorn's smsw r32 so (runtime/smswfix.py)
        r = REG32[reg]
        uc.reg_write(r, (uc.reg_read(r) & 0xFFFF) | (b.cr0 & 0xFFFF0000))
    uc.emu_start(GUEST, b.until, count=50)
    out = _outcome(uc, faults, lambda s: s)
    return Outcome(eflags=out["real_eflags"], **out)


def stub_text(key: str, insn: Insn, until: int, iopl: int) -> str:
    """The stub as the patcher assembles it while the guest's IOPL is `iopl`."""
    ctx = StubContext(STATE_ADDR, "t", iopl)
    text = TEMPLATES[key](ctx, insn)
    if key not in TERMINATORS:
        text += f"; jmp {until:#x}"
    return text


def state_page(b: Belief) -> bytearray:
    page = bytearray(b.state_noise)
    for name, values in (("vflags", (b.eflags & VFLAGS_MASK,)),
                         ("cr0", (b.cr0,)), ("gdtr", (b.gdt_limit, GUEST_GDT)),
                         ("idtr", (b.idtr[1], b.idtr[0])), ("ldtr", (b.ldtr,)), ("tr", (b.tr,))):
        off, fmt = FIELDS[name]
        struct.pack_into(fmt, page, off, *values)
    return page


def run_translation(key: str, insn: Insn, b: Belief) -> tuple[Outcome, range]:
    uc, faults = _engine()
    uc.mem_map(HYPER, HYPER_SIZE)
    _load_guest_memory(uc, b, insn)
    uc.mem_write(REAL_GDT, REAL_GDT_BYTES)
    uc.mem_write(STATE_ADDR, bytes(state_page(b)))
    uc.mem_write(HYPER + SELECTOR_VIEW, VIEW)
    uc.mem_write(HYPER + FLAG_TABLES, FLAG_TABLE_BYTES)
    code = assemble(stub_text(key, insn, b.until, iopl_of(b.eflags)), STUB_ADDR)
    uc.mem_write(STUB_ADDR, code)
    # the VMM's own tables and CR0, unlike the guest's
    uc.reg_write(X.UC_X86_REG_GDTR, (0, REAL_GDT, len(REAL_GDT_BYTES) - 1, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, HYPER + 0x1000, 0x7FF, 0))
    uc.reg_write(X.UC_X86_REG_LDTR, (0, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_TR, (0x48, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_CR0, 0x11)
    uc.reg_write(X.UC_X86_REG_CS, RING0_CODE)
    uc.reg_write(X.UC_X86_REG_SS, RING0_DATA)
    for seg, sel in (("ds", KDATA | 1), ("es", KDATA | 1), ("fs", FSEL | 1), ("gs", KDATA | 1)):
        uc.reg_write(SEGS[seg], sel)
    real_flags = (b.eflags & ~IOPL_MASK) | REAL_IOPL_CPL1      # the guest's IF is the real IF
    uc.mem_write(TRAMPOLINE, enter_ring1(b.regs["esp"], real_flags, STUB_ADDR))
    for n, r in GPRS.items():
        uc.reg_write(r, b.regs[n])
    uc.reg_write(X.UC_X86_REG_ESP, RING0_STACK)
    uc.emu_start(TRAMPOLINE, b.until, count=200)
    out = _outcome(uc, faults, guest_view)
    state = bytes(uc.mem_read(STATE_ADDR, len(b.state_noise)))
    vflags = struct.unpack_from("<I", state, FIELDS["vflags"][0])[0]
    return (Outcome(eflags=(out["real_eflags"] & ~VFLAGS_MASK) | vflags, state=state, **out),
            range(STUB_ADDR, STUB_ADDR + len(code)))


def enter_ring1(esp: int, eflags: int, eip: int) -> bytes:
    """A ring-0 trampoline: iretd into ring 1 (KCODE|1, KDATA|1) at eip."""
    return assemble(f"push {KDATA | 1}; push {esp:#x}; push {eflags:#x}; push {KCODE | 1}; "
                    f"push {eip:#x}; iretd", TRAMPOLINE)


# -- the comparison -----------------------------------------------------------------
def diff_memory(ref: Outcome, tr: Outcome, allowed) -> list[str]:
    bad = []
    for lo in ref.memory:
        a, t = ref.memory[lo], tr.memory[lo]
        for i in range(len(a)):
            if a[i] != t[i] and not any(lo + i in r for r in allowed):
                bad.append(f"{lo + i:#x}: {a[i]:#04x} != {t[i]:#04x}")
    return bad


def assert_same(ref: Outcome, tr: Outcome, b: Belief, what: str) -> None:
    assert tr.regs == ref.regs, what
    assert tr.segs == ref.segs, what
    assert hex(tr.eflags) == hex(ref.eflags), what
    scratch = [range(e - SCRATCH_BELOW_ESP, e) for e in (b.regs["esp"], ref.regs["esp"])]
    assert diff_memory(ref, tr, scratch) == [], what


def assert_state_page(before: bytes, after: bytes, vflags: int, what: str) -> None:
    changed = {name for name, (off, fmt) in FIELDS.items()
               if before[off:off + struct.calcsize(fmt)] != after[off:off + struct.calcsize(fmt)]}
    assert changed <= {"vflags", "scratch", "scratch2", "scratch3"}, what
    covered = set()
    for off, fmt in FIELDS.values():
        covered.update(range(off, off + struct.calcsize(fmt)))
    stray = [i for i in range(len(before)) if i not in covered and before[i] != after[i]]
    assert stray == [], what
    assert hex(struct.unpack_from("<I", after, FIELDS["vflags"][0])[0]) == hex(vflags), what


@pytest.mark.parametrize("key,sample", list(_cases()))
def test_stub_does_what_the_instruction_does(key, sample):
    insn = decode(sample)
    assert classify_bytes(insn.data).name == key and template_for(key, insn.data) is not None
    for trial in range(TRIALS):
        b = make_belief(sample, insn, trial)
        what = f"{key} {insn.mnemonic} {insn.op_str} trial {trial}: {stub_text(key, insn, b.until, iopl_of(b.eflags))}"
        ref = run_reference(insn, b)
        assert ref.faults == [] and ref.eip == b.until, what
        tr, stub = run_translation(key, insn, b)
        if tr.faults:
            check_exit(key, sample, b, ref, tr, stub, what)
            continue
        assert tr.eip == b.until, what
        assert tr.real_eflags & IOPL_MASK == REAL_IOPL_CPL1, what      # the real IOPL untouched
        assert not expects_exit(key, sample, b, ref), f"no exit: {what}"
        assert_same(ref, tr, b, what)
        assert_state_page(bytes(state_page(b)), tr.state, ref.eflags & VFLAGS_MASK, what)


def iopl_of(eflags: int) -> int:
    return (eflags & IOPL_MASK) >> 12


def expects_exit(key: str, sample: Sample, b: Belief, ref: Outcome) -> bool:
    """Where the templates document an exit: an iretd to ring 3 (the real
    EFLAGS at CPL 3 are the guest's, IOPL included); an iretd or popf(d) that
    loads another IOPL than the guest's (the stub was assembled for the
    guest's); a segment load or far jump naming an RPL-1 selector; every SS
    load."""
    if key in SS_LOADS:
        return True
    if key in SELECTOR_EXITS:
        return sample.sel & 3 == 1
    if key in EMULATE_EXITS:
        return sample.frame == "user" or iopl_of(ref.eflags) != iopl_of(b.eflags)
    if key == "popfd":
        return iopl_of(ref.eflags) != iopl_of(b.eflags)
    return False


def check_exit(key, sample, b, ref, tr, stub, what):
    assert len(tr.faults) == 1, what
    intno, eip = tr.faults[0]
    assert intno == 13 and eip in stub, what                 # the stub's hlt
    assert expects_exit(key, sample, b, ref), f"unexpected exit: {what}"
    # the VMM emulates the instruction: nothing of it may have happened yet,
    # the arithmetic flags included (an emulated iretd that faults on a bad
    # frame delivers them in the exception frame) -- except under popf(d)'s
    # exit, whose emulation loads every flag the stub's IOPL tests touched
    assert key in EMULATE_EXITS | SELECTOR_EXITS | SS_LOADS | {"popfd"}, what
    assert tr.regs == b.regs and tr.segs == GUEST_SEGS, what
    arith = 0x8D5                                           # CF PF AF ZF SF OF
    if key != "popfd":       # its stack slot was readable (the stub's tests read it): the emulation cannot fault
        assert tr.eflags & arith == b.eflags & arith, what
    assert_state_page(bytes(state_page(b)), tr.state, b.eflags & VFLAGS_MASK, what)
    before = Outcome(b.regs, GUEST, GUEST_SEGS, b.eflags, initial_memory(b), [])
    esp = b.regs["esp"]
    assert diff_memory(before, tr, [range(esp - SCRATCH_BELOW_ESP, esp)]) == [], what


def initial_memory(b: Belief) -> dict:
    out = {lo: b.memory[lo] for lo, _ in DATA}
    out[GUEST_GDT] = REF_GDT_BYTES + bytes(0x100 - len(REF_GDT_BYTES))
    return out


def test_every_documented_exit_is_exercised():
    """The samples reach both outcomes of every exit condition."""
    seen = set()
    for key in sorted(EMULATE_EXITS | {"popfd"}):
        for s in SAMPLES[key]:
            insn = decode(s)
            for trial in range(TRIALS):
                b = make_belief(s, insn, trial)
                seen.add((key, s.frame, expects_exit(key, s, b, run_reference(insn, b))))
    assert seen == {("iretd", "kernel", False), ("iretd", "kernel", True), ("iretd", "user", True),
                    ("popfd", "flags", False), ("popfd", "flags", True)}


# -- Unicorn facts the comparison stands on ------------------------------------------
def test_fact_the_trampoline_enters_ring_1_where_sensitive_instructions_behave_as_documented():
    """After the trampoline CS/SS carry RPL 1; with the real IOPL 1 `cli` runs
    (it clears the real IF), `pushfd` shows the real IF and IOPL 1 (not the
    guest's IOPL), and `hlt` faults (#GP at the hlt: the stubs' exit)."""
    uc, faults = _engine()
    uc.mem_write(REAL_GDT, REAL_GDT_BYTES)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, REAL_GDT, len(REAL_GDT_BYTES) - 1, 0))
    uc.reg_write(X.UC_X86_REG_CS, RING0_CODE)
    uc.reg_write(X.UC_X86_REG_SS, RING0_DATA)
    uc.reg_write(X.UC_X86_REG_DS, KDATA | 1)
    uc.reg_write(X.UC_X86_REG_ESP, RING0_STACK)
    uc.mem_write(TRAMPOLINE, enter_ring1(GUEST_ESP, IF_BIT | REAL_IOPL_CPL1 | 2, GUEST))
    uc.mem_write(GUEST, bytes.fromhex("9c" "5b" "fa" "f4"))      # pushfd; pop ebx; cli; hlt
    uc.emu_start(TRAMPOLINE, 0, count=20)
    assert faults == [(13, GUEST + 3)]
    assert (uc.reg_read(X.UC_X86_REG_CS), uc.reg_read(X.UC_X86_REG_SS)) == (KCODE | 1, KDATA | 1)
    assert uc.reg_read(X.UC_X86_REG_EBX) & (IF_BIT | IOPL_MASK) == IF_BIT | REAL_IOPL_CPL1
    assert not uc.reg_read(X.UC_X86_REG_EFLAGS) & IF_BIT
    assert uc.reg_read(X.UC_X86_REG_ESP) == GUEST_ESP


def test_fact_hlt_in_a_stub_faults_at_the_hlt():
    """The stub exit: `hlt` at CPL 1 is a #GP reported with EIP at the hlt."""
    sample = SAMPLES["iretd"][1]            # to ring 3: always an exit
    b = make_belief(sample, decode(sample), 0)
    tr, stub = run_translation("iretd", decode(sample), b)
    assert len(tr.faults) == 1 and tr.faults[0][0] == 13
    assert bytes(assemble("hlt", 0)) == b"\xf4" and tr.faults[0][1] in stub


def _cpl0(code: str, eax: int = 0xDEADBEEF) -> Uc:
    uc, faults = _engine()
    uc.mem_write(GUEST_GDT, REF_GDT_BYTES)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GUEST_GDT, 0x3F, 0))
    uc.reg_write(X.UC_X86_REG_CS, KCODE)
    uc.reg_write(X.UC_X86_REG_SS, KDATA)
    uc.reg_write(X.UC_X86_REG_CR0, 0x60050033)
    uc.reg_write(X.UC_X86_REG_LDTR, (0x1234, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_TR, (0x5678, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x243202)
    uc.reg_write(X.UC_X86_REG_EAX, eax)
    uc.reg_write(X.UC_X86_REG_ESP, GUEST_ESP)
    data = bytes.fromhex(code)
    uc.mem_write(GUEST, data)
    uc.emu_start(GUEST, GUEST + len(data), count=5)
    assert faults == []
    return uc


@pytest.mark.parametrize("code,eax", [
    ("0f01e0", 0xDEAD0033),     # smsw eax: only the low word of CR0, bits 31:16 kept
    ("660f01e0", 0xDEAD0033),   # smsw ax
    ("8cc8", 0x00000008),       # mov eax, cs: zero-extended
    ("668cc8", 0xDEAD0008),     # mov ax, cs: bits 31:16 kept
    ("0f00c8", 0x00005678),     # str eax: zero-extended
    ("660f00c8", 0xDEAD5678),   # str ax
    ("0f00c0", 0x00001234),     # sldt eax: zero-extended
    ("660f00c0", 0xDEAD1234),   # sldt ax
])
def test_fact_register_widths_of_the_selector_and_msw_reads_at_cpl0(code, eax):
    """What Unicorn at CPL 0 writes into a register: smsw r32 in 32-bit mode
    writes 16 bits (QEMU's MO_16), the 0x66 forms 16.  The reference, emulate,
    completes smsw r32 to the whole CR0 (runtime/smswfix.py; run_reference
    does the same)."""
    assert hex(_cpl0(code).reg_read(X.UC_X86_REG_EAX)) == hex(eax)


def test_fact_16_bit_pushf_pushes_the_low_word_and_keeps_the_high_flags():
    uc = _cpl0("669c")
    assert uc.reg_read(X.UC_X86_REG_ESP) == GUEST_ESP - 2
    assert bytes(uc.mem_read(GUEST_ESP - 2, 2)) == struct.pack("<H", 0x3202)
    assert hex(uc.reg_read(X.UC_X86_REG_EFLAGS)) == hex(0x243202)


def test_fact_reg_write_sets_what_sgdt_sidt_sldt_str_show_at_cpl0():
    uc, faults = _engine()
    uc.mem_write(GUEST_GDT, REF_GDT_BYTES)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GUEST_GDT, 0x3F, 0))
    uc.reg_write(X.UC_X86_REG_CS, KCODE)
    uc.reg_write(X.UC_X86_REG_SS, KDATA)
    uc.reg_write(X.UC_X86_REG_DS, KDATA)
    uc.reg_write(X.UC_X86_REG_IDTR, (0, 0x89ABCDEF, 0x1FF, 0))
    uc.reg_write(X.UC_X86_REG_LDTR, (0xBEEF, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_TR, (0xCAFE, 0, 0, 0))
    # sgdt [0x3000]; sidt [0x3008]; sldt [0x3010]; str [0x3012]
    code = bytes.fromhex("0f010500300000" "0f010d08300000" "0f000510300000" "0f000d12300000")
    uc.mem_write(GUEST, code)
    uc.emu_start(GUEST, GUEST + len(code), count=5)
    assert faults == []
    assert bytes(uc.mem_read(0x3000, 20)) == (struct.pack("<HI", 0x3F, GUEST_GDT) + b"\0\0"
                                              + struct.pack("<HI", 0x1FF, 0x89ABCDEF) + b"\0\0"
                                              + struct.pack("<HH", 0xBEEF, 0xCAFE))
