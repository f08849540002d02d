"""The x86-32 instructions a VMM must care about: one table, as data.

Every other part of the project reads this table: the scanner marks sensitive
sites with it, the patcher picks the stub registered under a row's name, the runtime's exit
dispatcher classifies a faulting instruction with `classify_bytes`, and
docs/sensitive-instructions.md is generated from it (`python -m bt.catalog --doc`).

Each row lists its encodings as `Enc` patterns (opcode bytes plus an optional
ModRM condition).  The fast classifier is *built from those patterns* at import
time, so the decode tables and the documentation cannot drift apart.

`faults_at_cpl1` answers: run by a ring-0 kernel deprivileged to ring 1 with
IOPL 0 (no VME, UMIP off, CR4.TSD/PCE clear), does the instruction raise an
exception instead of doing what the kernel meant?  `fault_note` gives the
condition where the answer depends on operands.

What the VMM does with a row is explicit:
  `emulation` - a runtime routine is registered under the row's name
                (runtime/emulation.py, `@emulates(name)`): a fault of this
                instruction at CPL 1, an int3 patch or a stub exit runs it;
  `stub`      - a stub template is registered under the row's name
                (patcher/templates.py, `@stub(name)`): a jump patch can
                translate it inline;
  `bt`        - how bt mode treats a site of the row (`BT`);
  `trap`      - what happens to it in trap mode (`Trap`).
Both registries check themselves against these flags at import time
(`check_registry`), so a row cannot promise a routine or stub that does not
exist, and nothing can be registered that no row declares.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Klass(enum.Enum):
    PRIVILEGED = "privileged"
    SENSITIVE_UNPRIVILEGED = "sensitive-unprivileged"
    CONTROL_FLOW = "control-flow"
    IO = "io"
    INTERRUPT = "interrupt"


class RIGroup(enum.Enum):
    """Robin & Irvine (USENIX Security 2000): the two groups of x86 instructions
    that break classic trap-and-emulate virtualization."""

    SENSITIVE_REGISTER = "sensitive-register"
    PROTECTION_SYSTEM = "protection-system"


class BT(enum.Enum):
    """How bt mode treats a site of a row (patcher/policy.py reads this)."""

    PATCH = "patch"                      # patched when scanned: jump patch, else int3 patch
    PATCH_PRIVILEGED = "patch-privileged"  # jump patch when scanned (eager) or at its first
                                         # trap; refused -> it keeps trapping (never int3).
                                         # No row since cli/sti run natively (real IOPL 1).
    TRAP = "trap"                        # left to fault; the routine emulates it
    REFLECT = "reflect"                  # delivered to the guest's own IDT
    NATIVE = "native"                    # ring compression makes it behave
    DEVICE = "device"                    # port I/O: the I/O hooks handle it in every mode
    HOOK = "hook"                        # the cpuid instruction hook answers it in every mode
    UNSUPPORTED = "unsupported"          # faults, no routine: the fault reaches the guest


class Trap(enum.Enum):
    """What happens to an instruction of a row in trap mode."""

    EMULATE = "emulate"                  # it faults at CPL 1 and the routine emulates it
    SILENT = "silent"                    # it runs natively with the host's truth (the hole)
    REFLECT = "reflect"
    NATIVE = "native"
    DEVICE = "device"
    HOOK = "hook"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Treatment:
    emulation: bool
    stub: bool
    bt: BT
    trap: Trap


@dataclass(frozen=True)
class Enc:
    """One encoding pattern.

    `opcode`: opcode bytes after any prefixes (e.g. b"\\x0f\\x01").
    `reg`: required ModRM.reg (the /digit), or None.
    `mod`: "mem" (ModRM.mod != 3), "reg" (mod == 3), or None for either.
    `rm`: required ModRM.rm (only with mod == "reg"), or None.
    `operands`: what follows, for the doc (e.g. "ib", "ptr16:32").
    `note`: e.g. the 16-bit form's name.
    """

    opcode: bytes
    reg: int | None = None
    mod: str | None = None
    rm: int | None = None
    operands: str = ""
    note: str = ""

    @property
    def has_modrm(self) -> bool:
        return self.reg is not None or self.mod is not None

    def modrm_bytes(self) -> list[int]:
        """Every ModRM byte value this pattern accepts."""
        out = []
        for m in range(256):
            mod, reg, rm = m >> 6, (m >> 3) & 7, m & 7
            if self.reg is not None and reg != self.reg:
                continue
            if self.mod == "mem" and mod == 3:
                continue
            if self.mod == "reg" and mod != 3:
                continue
            if self.rm is not None and rm != self.rm:
                continue
            out.append(m)
        return out

    def text(self) -> str:
        s = " ".join(f"{b:02X}" for b in self.opcode)
        if self.reg is not None and self.rm is not None and self.mod == "reg":
            s += f" {0xC0 | (self.reg << 3) | self.rm:02X}"
        elif self.reg is not None:
            s += f" /{self.reg}"
        elif self.mod is not None:
            s += " /r"
        if self.mod == "mem" and self.rm is None:
            s += " (m)"
        elif self.mod == "reg" and self.rm is None:
            s += " (r)"
        if self.operands:
            s += " " + self.operands
        if self.note:
            s += f" [{self.note}]"
        return s


@dataclass(frozen=True)
class CatalogEntry:
    name: str                          # unique key, e.g. "pushfd", "mov_to_cr"
    mnemonics: tuple[str, ...]         # capstone mnemonics this row decodes to
    encodings: tuple[Enc, ...]
    klass: Klass
    why: str
    ri_group: RIGroup | None
    faults_at_cpl1: bool
    treatment: Treatment
    fault_note: str = ""
    opsize_variant: str = ""           # what a 0x66 prefix turns it into
    segment_override: bool = False     # memory operand takes 26/2E/36/3E/64/65

    @property
    def emulation(self) -> bool:
        return self.treatment.emulation

    @property
    def stub(self) -> bool:
        return self.treatment.stub

    @property
    def bt(self) -> BT:
        return self.treatment.bt

    @property
    def trap(self) -> Trap:
        return self.treatment.trap


PRIV, SU, CF, IO, INT = (Klass.PRIVILEGED, Klass.SENSITIVE_UNPRIVILEGED,
                         Klass.CONTROL_FLOW, Klass.IO, Klass.INTERRUPT)
SR, PS = RIGroup.SENSITIVE_REGISTER, RIGroup.PROTECTION_SYSTEM
T, F = True, False
PATCH, PATCH_PRIVILEGED, TRAP = BT.PATCH, BT.PATCH_PRIVILEGED, BT.TRAP
REFLECT, NATIVE, DEVICE, HOOK, UNSUPPORTED = (BT.REFLECT, BT.NATIVE, BT.DEVICE, BT.HOOK,
                                              BT.UNSUPPORTED)
EMULATE, SILENT = Trap.EMULATE, Trap.SILENT


def V(emulation: bool, stub: bool, bt: BT, trap) -> Treatment:
    """A row's treatment; `trap` may be given as the BT member of the same name."""
    return Treatment(emulation, stub, bt, trap if isinstance(trap, Trap) else Trap(trap.value))
OSZ_SAME = "same instruction with a 16-bit operand"


def _e(name, mnems, encs, klass, why, ri, faults, virt: Treatment, **kw) -> CatalogEntry:
    if isinstance(mnems, str):
        mnems = (mnems,)
    return CatalogEntry(name, tuple(mnems), tuple(encs), klass, why, ri, faults, virt, **kw)


def _b(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr)


# The table.  Order is the order of the generated document.
CATALOG: tuple[CatalogEntry, ...] = (
    # --- interrupt flag and interrupt delivery -------------------------------
    _e("cli", "cli", [Enc(_b("fa"))], INT,
       "clears IF; IOPL-sensitive (the VMM runs ring 1 at real IOPL 1 with the guest's IF: it runs natively)",
       None, True, V(F, F, NATIVE, NATIVE)),
    _e("sti", "sti", [Enc(_b("fb"))], INT,
       "sets IF (interrupt shadow of one instruction); IOPL-sensitive (natively at real IOPL 1, as cli)",
       None, True, V(F, F, NATIVE, NATIVE)),
    _e("pushfd", ("pushfd", "pushf"), [Enc(_b("9c"), note="66 9C = pushf")], SU,
       "stores the real IOPL (1 at CPL 1; the IF is the guest's)", SR, False, V(T, T, PATCH, SILENT),
       opsize_variant="pushf (16-bit FLAGS)"),
    _e("popfd", ("popfd", "popf"), [Enc(_b("9d"), note="66 9D = popf")], SU,
       "silently ignores IOPL changes below CPL 0 (IF changes where CPL <= IOPL)", SR, False, V(T, T, PATCH, SILENT),
       opsize_variant="popf (16-bit FLAGS)"),
    _e("iretd", ("iretd", "iret"), [Enc(_b("cf"), note="66 CF = iret")], INT,
       "pops CS/EFLAGS: cannot set IOPL, reveals ring via CS RPL", None, False, V(T, T, PATCH, EMULATE),
       fault_note="#GP when the frame's CS RPL is below the CPL (return to ring 0)",
       opsize_variant="iret (16-bit frame)"),
    _e("int", "int", [Enc(_b("cd"), operands="ib")], INT,
       "software interrupt through the IDT", PS, True, V(F, F, REFLECT, REFLECT),
       fault_note="#GP when the gate's DPL is below the CPL (ring-0 gates); "
                  "Unicorn reports every int n to UC_HOOK_INTR"),
    _e("int3", "int3", [Enc(_b("cc"))], INT,
       "breakpoint trap through the IDT", None, True, V(F, F, REFLECT, REFLECT),
       fault_note="#GP when gate 3's DPL is below the CPL"),
    _e("into", "into", [Enc(_b("ce"))], INT,
       "overflow trap through the IDT when OF=1", None, True, V(F, F, REFLECT, REFLECT),
       fault_note="only when OF=1 and gate 4's DPL is below the CPL"),
    _e("int1", "int1", [Enc(_b("f1"))], INT,
       "ICEBP: debug trap through the IDT (no DPL check)", None, False, V(F, F, REFLECT, REFLECT)),
    _e("sysenter", "sysenter", [Enc(_b("0f34"))], INT,
       "fast system call into ring 0 at the MSR-given entry", None, False, V(F, F, UNSUPPORTED, UNSUPPORTED),
       fault_note="#GP only when IA32_SYSENTER_CS is 0; the VMM keeps it 0 so it exits"),
    _e("sysexit", "sysexit", [Enc(_b("0f35"))], INT,
       "fast return to ring 3; requires CPL 0", None, True, V(F, F, UNSUPPORTED, UNSUPPORTED)),
    # --- halting and caches --------------------------------------------------
    _e("hlt", "hlt", [Enc(_b("f4"))], PRIV, "halts the CPU", None, True, V(T, F, TRAP, EMULATE)),
    _e("clts", "clts", [Enc(_b("0f06"))], PRIV, "clears CR0.TS", None, True, V(T, F, TRAP, EMULATE)),
    _e("invd", "invd", [Enc(_b("0f08"))], PRIV, "invalidates caches", None, True, V(T, F, TRAP, EMULATE)),
    _e("wbinvd", "wbinvd", [Enc(_b("0f09"))], PRIV,
       "writes back and invalidates caches", None, True, V(T, F, TRAP, EMULATE)),
    _e("invlpg", "invlpg", [Enc(_b("0f01"), reg=7, mod="mem")], PRIV,
       "invalidates one TLB entry", None, True, V(T, F, TRAP, EMULATE), segment_override=True),
    # --- I/O ------------------------------------------------------------------
    _e("in", "in", [Enc(_b("e4"), operands="ib"), Enc(_b("e5"), operands="ib"),
                    Enc(_b("ec")), Enc(_b("ed"))], IO,
       "port input; IOPL-sensitive", None, True, V(F, F, DEVICE, DEVICE),
       opsize_variant="16-bit port access (66 E5 / 66 ED)"),
    _e("out", "out", [Enc(_b("e6"), operands="ib"), Enc(_b("e7"), operands="ib"),
                      Enc(_b("ee")), Enc(_b("ef"))], IO,
       "port output; IOPL-sensitive", None, True, V(F, F, DEVICE, DEVICE),
       opsize_variant="16-bit port access (66 E7 / 66 EF)"),
    _e("ins", ("insb", "insw", "insd", "rep insb", "rep insw", "rep insd"),
       [Enc(_b("6c")), Enc(_b("6d"))], IO,
       "string port input (REP F3 allowed); IOPL-sensitive", None, True, V(F, F, DEVICE, DEVICE),
       opsize_variant="insw (66 6D)"),
    _e("outs", ("outsb", "outsw", "outsd", "rep outsb", "rep outsw", "rep outsd"),
       [Enc(_b("6e")), Enc(_b("6f"))], IO,
       "string port output (REP F3 allowed); IOPL-sensitive", None, True, V(F, F, DEVICE, DEVICE),
       opsize_variant="outsw (66 6F)", segment_override=True),
    # --- descriptor tables ----------------------------------------------------
    _e("lgdt", "lgdt", [Enc(_b("0f01"), reg=2, mod="mem")], PRIV,
       "loads GDTR", None, True, V(T, F, TRAP, EMULATE),
       opsize_variant="66 prefix loads a 24-bit base", segment_override=True),
    _e("lidt", "lidt", [Enc(_b("0f01"), reg=3, mod="mem")], PRIV,
       "loads IDTR", None, True, V(T, F, TRAP, EMULATE),
       opsize_variant="66 prefix loads a 24-bit base", segment_override=True),
    _e("lldt", "lldt", [Enc(_b("0f00"), reg=2)], PRIV, "loads LDTR", None, True,
       V(T, F, TRAP, EMULATE), segment_override=True),
    _e("ltr", "ltr", [Enc(_b("0f00"), reg=3)], PRIV, "loads the task register", None, True,
       V(T, F, TRAP, EMULATE), segment_override=True),
    _e("sgdt", "sgdt", [Enc(_b("0f01"), reg=0, mod="mem")], SU,
       "stores the VMM's GDTR", SR, False, V(T, T, PATCH, SILENT), segment_override=True),
    _e("sidt", "sidt", [Enc(_b("0f01"), reg=1, mod="mem")], SU,
       "stores the VMM's IDTR", SR, False, V(T, T, PATCH, SILENT), segment_override=True),
    _e("sldt", "sldt", [Enc(_b("0f00"), reg=0)], SU,
       "stores the VMM's LDTR", SR, False, V(T, T, PATCH, SILENT), segment_override=True),
    _e("str", "str", [Enc(_b("0f00"), reg=1)], SU,
       "stores the VMM's task register", PS, False, V(T, T, PATCH, SILENT), segment_override=True),
    _e("smsw", "smsw", [Enc(_b("0f01"), reg=4)], SU,
       "stores the real CR0 (PE, TS, ...; r16 and m16 its low word)", SR, False, V(T, T, PATCH, SILENT),
       segment_override=True),
    _e("lmsw", "lmsw", [Enc(_b("0f01"), reg=6)], PRIV,
       "loads CR0 low bits", None, True, V(T, F, TRAP, EMULATE), segment_override=True),
    # --- control and debug registers ------------------------------------------
    _e("mov_from_cr", "mov", [Enc(_b("0f20"), mod=None, reg=None, operands="/r",
                                  note="mov r32, CRn")], PRIV,
       "reads CR0/2/3/4", None, True, V(T, F, TRAP, EMULATE)),
    _e("mov_to_cr", "mov", [Enc(_b("0f22"), operands="/r", note="mov CRn, r32")], PRIV,
       "writes CR0/2/3/4", None, True, V(T, F, TRAP, EMULATE)),
    _e("mov_from_dr", "mov", [Enc(_b("0f21"), operands="/r", note="mov r32, DRn")], PRIV,
       "reads DR0-7", None, True, V(T, F, TRAP, EMULATE)),
    _e("mov_to_dr", "mov", [Enc(_b("0f23"), operands="/r", note="mov DRn, r32")], PRIV,
       "writes DR0-7", None, True, V(T, F, TRAP, EMULATE)),
    # --- model-specific registers, counters, identification ---------------------
    _e("rdmsr", "rdmsr", [Enc(_b("0f32"))], PRIV, "reads an MSR", None, True, V(T, F, TRAP, EMULATE)),
    _e("wrmsr", "wrmsr", [Enc(_b("0f30"))], PRIV, "writes an MSR", None, True, V(T, F, TRAP, EMULATE)),
    _e("xsetbv", "xsetbv", [Enc(_b("0f01"), reg=2, mod="reg", rm=1)], PRIV,
       "writes XCR0", None, True, V(F, F, UNSUPPORTED, UNSUPPORTED)),
    _e("rdtsc", "rdtsc", [Enc(_b("0f31"))], SU,
       "reads the host time-stamp counter, not virtual time", None, False, V(T, F, TRAP, EMULATE),
       fault_note="#GP only with CR4.TSD set"),
    _e("rdtscp", "rdtscp", [Enc(_b("0f01"), reg=7, mod="reg", rm=1)], SU,
       "reads the host time-stamp counter and TSC_AUX", None, False, V(F, F, UNSUPPORTED, UNSUPPORTED),
       fault_note="#GP only with CR4.TSD set"),
    _e("rdpmc", "rdpmc", [Enc(_b("0f33"))], PRIV,
       "reads a performance counter", None, True, V(T, F, TRAP, EMULATE),
       fault_note="allowed at any CPL when CR4.PCE is set"),
    _e("cpuid", "cpuid", [Enc(_b("0fa2"))], SU,
       "reports the host CPU, not the virtual one", None, False, V(F, F, HOOK, HOOK)),
    # --- segment protection queries -------------------------------------------
    _e("lar", "lar", [Enc(_b("0f02"), operands="/r")], SU,
       "reveals descriptor DPLs (shadow GDT has DPL 1)", PS, False, V(T, F, PATCH, SILENT),
       segment_override=True),
    _e("lsl", "lsl", [Enc(_b("0f03"), operands="/r")], SU,
       "reveals segment limits of the shadow tables", PS, False, V(T, F, PATCH, SILENT),
       segment_override=True),
    _e("verr", "verr", [Enc(_b("0f00"), reg=4)], SU,
       "readability depends on CPL vs DPL", PS, False, V(T, F, PATCH, SILENT), segment_override=True),
    _e("verw", "verw", [Enc(_b("0f00"), reg=5)], SU,
       "writability depends on CPL vs DPL", PS, False, V(T, F, PATCH, SILENT), segment_override=True),
    # --- segment registers ------------------------------------------------------
    _e("mov_from_cs", "mov", [Enc(_b("8c"), reg=1, note="mov r/m, cs")], SU,
       "CS RPL reveals ring 1", PS, False, V(T, T, PATCH, SILENT), segment_override=True),
    _e("mov_from_ss", "mov", [Enc(_b("8c"), reg=2, note="mov r/m, ss")], SU,
       "SS RPL reveals ring 1", PS, False, V(T, T, PATCH, SILENT), segment_override=True),
    _e("mov_from_sreg", "mov", [Enc(_b("8c"), reg=r, note=f"mov r/m, {s}")
                                for r, s in ((0, "es"), (3, "ds"), (4, "fs"), (5, "gs"))], SU,
       "stores a data segment selector", PS, False, V(F, F, NATIVE, NATIVE), segment_override=True),
    _e("mov_to_ss", "mov", [Enc(_b("8e"), reg=2, note="mov ss, r/m")], SU,
       "SS must have RPL = DPL = CPL: a ring-0 selector faults, an RPL-1 one loads (CPL 0: #GP)", PS, True,
       V(T, T, PATCH, EMULATE), fault_note="when the selector's RPL is 0, as a ring-0 kernel's is",
       segment_override=True),
    _e("mov_to_cs", "mov", [Enc(_b("8e"), reg=1, note="mov cs, r/m")], SU,
       "invalid opcode at every CPL", PS, True, V(F, F, REFLECT, REFLECT), fault_note="#UD always",
       segment_override=True),
    _e("mov_to_sreg", "mov", [Enc(_b("8e"), reg=r, note=f"mov {s}, r/m")
                              for r, s in ((0, "es"), (3, "ds"), (4, "fs"), (5, "gs"))], SU,
       "an RPL-1 selector of a ring-0 descriptor loads at CPL 1 (CPL 0: #GP)", PS, False,
       V(T, T, PATCH, SILENT),
       fault_note="#GP for DPL-0 descriptors; the shadow GDT raises them to DPL 1",
       segment_override=True),
    _e("push_cs", "push", [Enc(_b("0e"), note="66 0E = push cs 16-bit")], SU,
       "pushes CS with RPL 1", PS, False, V(T, T, PATCH, SILENT), opsize_variant=OSZ_SAME),
    _e("push_ss", "push", [Enc(_b("16"))], SU,
       "pushes SS with RPL 1", PS, False, V(T, T, PATCH, SILENT), opsize_variant=OSZ_SAME),
    _e("push_sreg", "push", [Enc(_b("06"), note="es"), Enc(_b("1e"), note="ds"),
                             Enc(_b("0fa0"), note="fs"), Enc(_b("0fa8"), note="gs")], SU,
       "pushes a data segment selector", PS, False, V(F, F, NATIVE, NATIVE), opsize_variant=OSZ_SAME),
    _e("pop_ss", "pop", [Enc(_b("17"))], SU,
       "SS must have RPL = DPL = CPL: a ring-0 selector faults, an RPL-1 one loads (CPL 0: #GP)", PS, True,
       V(T, T, PATCH, EMULATE),
       fault_note="when the selector's RPL is 0", opsize_variant=OSZ_SAME),
    _e("lss", "lss", [Enc(_b("0fb2"), mod="mem", operands="m16:32")], SU,
       "loads SS: SS must have RPL = DPL = CPL; a ring-0 selector faults, an RPL-1 one loads", None, True,
       V(T, T, PATCH, EMULATE), fault_note="when the selector's RPL is 0, as a ring-0 kernel's is",
       opsize_variant="m16:16 (loads SP)", segment_override=True),
    _e("pop_sreg", "pop", [Enc(_b("07"), note="es"), Enc(_b("1f"), note="ds"),
                           Enc(_b("0fa1"), note="fs"), Enc(_b("0fa9"), note="gs")], SU,
       "an RPL-1 selector of a ring-0 descriptor loads at CPL 1 (CPL 0: #GP)", PS, False,
       V(T, T, PATCH, SILENT),
       fault_note="#GP for DPL-0 descriptors; the shadow GDT raises them to DPL 1",
       opsize_variant=OSZ_SAME),
    # --- far control transfers --------------------------------------------------
    _e("call_far", ("lcall", "call"), [Enc(_b("9a"), operands="ptr16:32"),
                                       Enc(_b("ff"), reg=3, mod="mem", operands="m16:32")], CF,
       "pushes CS (RPL 1); privilege checks on the target", PS, False, V(T, F, PATCH, SILENT),
       fault_note="#GP when the target code segment's DPL differs from the CPL",
       opsize_variant="ptr16:16 / m16:16 target", segment_override=True),
    _e("jmp_far", ("ljmp", "jmp"), [Enc(_b("ea"), operands="ptr16:32"),
                                    Enc(_b("ff"), reg=5, mod="mem", operands="m16:32")], CF,
       "privilege checks on the target: an RPL-1 kernel selector passes at CPL 1 (CPL 0: #GP)", PS, False,
       V(T, T, PATCH, SILENT),
       fault_note="#GP when the target code segment's DPL differs from the CPL",
       opsize_variant="ptr16:16 / m16:16 target", segment_override=True),
    _e("retf", "retf", [Enc(_b("cb")), Enc(_b("ca"), operands="iw")], CF,
       "pops CS; a ring-0 CS is a return to an inner ring", PS, False, V(T, F, TRAP, EMULATE),
       fault_note="#GP when the popped CS RPL is below the CPL",
       opsize_variant="16-bit return frame"),
)

# Prefix bytes skipped by the classifier (group 1-4 legacy prefixes).
# Rows that open an interrupt shadow like sti's (SDM, MOV/POP: an SS load
# inhibits interrupts until the next instruction has run; lss does not).  The
# VMM opens it when it emulates one (runtime/emulation.py), and bt ends a
# template after one in its block (patcher/patches.py).
SHADOW_OPENERS = frozenset({"mov_to_ss", "pop_ss"})
for _name in SHADOW_OPENERS:
    assert any(e.name == _name for e in CATALOG), _name

PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})

_BY_NAME: dict[str, CatalogEntry] = {}
for _row in CATALOG:
    if _row.name in _BY_NAME:
        raise AssertionError(f"duplicate catalog name {_row.name}")
    _BY_NAME[_row.name] = _row


def _build_tables():
    """Opcode tables: slot = None | CatalogEntry | list[256] indexed by ModRM."""
    one: list = [None] * 256
    two: list = [None] * 256
    for row in CATALOG:
        for enc in row.encodings:
            op = enc.opcode
            if len(op) == 1:
                table, idx = one, op[0]
            elif len(op) == 2 and op[0] == 0x0F:
                table, idx = two, op[1]
            else:
                raise AssertionError(f"unsupported opcode {op.hex()} in {row.name}")
            if not enc.has_modrm:
                if table[idx] is not None:
                    raise AssertionError(f"opcode clash at {op.hex()} ({row.name})")
                table[idx] = row
                continue
            sub = table[idx]
            if sub is None:
                sub = table[idx] = [None] * 256
            elif not isinstance(sub, list):
                raise AssertionError(f"opcode clash at {op.hex()} ({row.name})")
            for m in enc.modrm_bytes():
                if sub[m] is not None:
                    raise AssertionError(f"ModRM clash at {op.hex()} {m:02x} ({row.name})")
                sub[m] = row
    return one, two


_ONE, _TWO = _build_tables()

# First bytes that can start a catalogued instruction (prefixes and 0F included):
# the scanner's hot path looks here before calling classify_bytes.
MAYBE_SENSITIVE_FIRST_BYTE = bytes(
    1 if (_ONE[b] is not None or b == 0x0F or b in PREFIXES) else 0 for b in range(256))


# The same question one step further, for code that skips the prefixes itself
# (the scanner's C walk): entry b is 1 when a one-byte opcode b, entry 256 + b
# when the two-byte opcode 0F b, can be catalogued; PREFIX_BYTE marks PREFIXES.
MAYBE_SENSITIVE_OPCODE = bytes(1 if _ONE[b] is not None else 0 for b in range(256)) + bytes(
    1 if _TWO[b] is not None else 0 for b in range(256))
PREFIX_BYTE = bytes(1 if b in PREFIXES else 0 for b in range(256))


def classify_bytes(code: bytes) -> CatalogEntry | None:
    """The catalog row of the instruction whose bytes start `code`, or None.

    Skips legacy prefixes (at most 14), then looks the opcode up in tables built
    from the rows' `Enc` patterns.  Cheap enough for every fault site.
    """
    n = len(code)
    i = 0
    while i < n and i < 14 and code[i] in PREFIXES:
        i += 1
    if i >= n:
        return None
    op = code[i]
    if op == 0x0F:
        i += 1
        if i >= n:
            return None
        slot = _TWO[code[i]]
    else:
        slot = _ONE[op]
    if slot is None or slot.__class__ is CatalogEntry:
        return slot
    i += 1
    if i >= n:
        return None
    return slot[code[i]]


def prefix_info(code: bytes) -> tuple[int, bool, int | None]:
    """(number of prefix bytes, 16-bit operand size?, segment-override prefix or None)."""
    i = 0
    opsize16 = False
    seg = None
    while i < len(code) and i < 14 and code[i] in PREFIXES:
        b = code[i]
        if b == 0x66:
            opsize16 = True
        elif b in (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65):
            seg = b
        i += 1
    return i, opsize16, seg


def by_name(name: str) -> CatalogEntry:
    """The row with this unique name (e.g. "cli", "mov_to_cr"); KeyError if none."""
    return _BY_NAME[name]


def by_mnemonic(name: str) -> CatalogEntry | None:
    """The row for a row name or an unambiguous capstone mnemonic ("cli",
    "pushf", "insb", "mov_to_cr"); None when the mnemonic is not catalogued or
    is shared by several rows (mov, push, pop: use classify_bytes)."""
    row = _BY_NAME.get(name)
    if row is not None:
        return row
    rows = by_mnemonic_all(name)
    return rows[0] if len(rows) == 1 else None


def by_mnemonic_all(mnemonic: str) -> tuple[CatalogEntry, ...]:
    """Every row a capstone mnemonic can decode to."""
    return _BY_MNEMONIC.get(mnemonic, ())


_BY_MNEMONIC: dict[str, tuple[CatalogEntry, ...]] = {}
for _row in CATALOG:
    for _m in _row.mnemonics:
        _BY_MNEMONIC[_m] = _BY_MNEMONIC.get(_m, ()) + (_row,)


def check_registry(what: str, registered, declared) -> None:
    """Raise when `registered` (the names a registry holds) differs from the rows
    whose `declared(row)` is true: called by runtime/emulation.py and
    patcher/templates.py when they finish registering."""
    want = {r.name for r in CATALOG if declared(r)}
    have = set(registered)
    missing, extra = sorted(want - have), sorted(have - want)
    if missing or extra:
        raise AssertionError(f"{what} disagree with bt/catalog.py: declared but not registered "
                             f"{missing}, registered but not declared {extra}")


def classify(insn: bytes | str) -> CatalogEntry | None:
    """Classify raw instruction bytes, or a row name / unambiguous mnemonic."""
    if isinstance(insn, (bytes, bytearray, memoryview)):
        return classify_bytes(bytes(insn))
    return by_mnemonic(insn)


# ---------------------------------------------------------------------------
# The generated document.

DOC_PATH = "docs/sensitive-instructions.md"
REGEN_COMMAND = "python -m bt.catalog --doc"


def render_markdown() -> str:
    lines = [
        "# Sensitive x86-32 instructions",
        "",
        "<!-- Generated from bt/catalog.py by `" + REGEN_COMMAND + "`: do not edit. -->",
        "",
        "Every instruction a VMM that runs a ring-0 kernel in ring 1 must care about.",
        "`faults at CPL 1` assumes IOPL 0, no VME, UMIP off, CR4.TSD and CR4.PCE clear.",
        "`routine`: an emulation routine is registered under the row's name (runtime/emulation.py);",
        "`stub`: a stub template is registered under it (patcher/templates.py).",
        "`trap mode`: `emulate` = it faults at CPL 1 and the routine emulates it; `silent` = it",
        "runs natively with the host's truth (trap-and-emulate's hole); `reflect` = delivered to",
        "the guest's own IDT; `native` = ring compression (shadow descriptor tables) makes it",
        "behave; `device` = the port I/O hooks handle it (every mode); `hook` = the cpuid hook",
        "answers it (every mode); `unsupported` = it faults, no routine models it, and the fault",
        "reaches the guest (docs/patches.md).",
        "`bt mode`: `patch` = patched when scanned (jump patch, else int3 patch);",
        "`patch-privileged` = jump patch when scanned (eager) or at its first trap, else it keeps",
        "trapping; `trap` = left to fault and be emulated; the others as in trap mode.",
        "Encodings: `/n` = ModRM.reg, `(m)` = memory operand only, `(r)` = register operand only;",
        "all encodings accept legacy prefixes (operand size 66, segment overrides, REP),",
        "which the classifier skips.",
        "",
        "| name | mnemonics | encodings | class | Robin & Irvine | faults at CPL 1 | routine | stub "
        "| trap mode | bt mode | why |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in CATALOG:
        enc = "<br>".join(f"`{e.text()}`" for e in r.encodings)
        faults = "yes" if r.faults_at_cpl1 else "no"
        if r.fault_note:
            faults += f" ({r.fault_note})"
        why = r.why
        extra = []
        if r.opsize_variant:
            extra.append(f"66: {r.opsize_variant}")
        if r.segment_override:
            extra.append("segment overrides apply to its memory operand")
        if extra:
            why += " (" + "; ".join(extra) + ")"
        lines.append(
            f"| {r.name} | {', '.join(r.mnemonics)} | {enc} | {r.klass.value} | "
            f"{r.ri_group.value if r.ri_group else '-'} | {faults} | {'yes' if r.emulation else '-'} | "
            f"{'yes' if r.stub else '-'} | `{r.trap.value}` | `{r.bt.value}` | {why} |")
    lines += ["", "## Counts", ""]
    for k in Klass:
        lines.append(f"- {k.value}: {sum(1 for r in CATALOG if r.klass is k)}")
    lines.append(f"- Robin & Irvine rows: {sum(1 for r in CATALOG if r.ri_group)}")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bt.docgen import doc_command
    return doc_command(argv, module="bt.catalog", default_path=DOC_PATH,
                       render=lambda old: render_markdown(), what="the markdown table")


if __name__ == "__main__":
    raise SystemExit(main())
