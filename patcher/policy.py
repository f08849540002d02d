"""The patch policy: what bt mode does with one site, as a pure function.

Given a site (a scanned instruction), its CFG neighbourhood (the instructions
after it and which addresses are branch targets) and what is installed (the
patch covering an address, if any), `decide` answers JUMP (with the
instructions the jump covers), INT3, TRAP (leave it to fault, or to the I/O and
cpuid hooks), NONE (nothing to do), or for an unresolved indirect branch
`decide_branch` answers GUARD.  A refused jump carries its `Refusal`.

The answer comes from the site's catalog row (`bt` field, bt/catalog.py) and the
"eager privileged patches" switch; nothing here touches an engine, so bt mode
(runtime/bt.py) and `bt.api.plan_patches` ask the same function.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Sequence

from bt.catalog import BT, Klass, classify_bytes
from bt.x86 import PAGE
from patcher.templates import EMULATE_EXITS, Insn, template_for

JMP_SIZE = 5


class Refusal(str, enum.Enum):
    BRANCH_TARGET_INSIDE = "branch-target-inside"
    PAGE_BOUNDARY = "page-boundary"
    UNSCANNED = "unscanned-bytes"
    NEEDS_VMM = "needs-vmm"
    UNRELOCATABLE = "unrelocatable-instruction"
    ASSEMBLY = "assembly-error"
    CACHE_FULL = "stub-cache-full"
    OVERLAPS_PATCH = "overlaps-patch"
    EXIT_INSIDE = "exit-point-inside"
    IRQ_SHADOW = "sti-shadow"


class Action(str, enum.Enum):
    JUMP = "jump"      # a jump patch into a stub translating `covered`
    INT3 = "int3"      # an int3 patch: the VMM emulates the site on the #BP
    GUARD = "guard"    # an int3 guard on an unresolved indirect branch
    TRAP = "trap"      # left to the runtime's exits (fault, I/O or cpuid hook)
    NONE = "none"      # nothing to do: ring compression, or already translated


@dataclass(frozen=True)
class Decision:
    action: Action
    covered: tuple[Insn, ...] = ()
    refused: Refusal | None = None

    @property
    def end(self) -> int:
        last = self.covered[-1] if self.covered else None
        return last.addr + last.size if last else 0


@dataclass(frozen=True)
class Neighbourhood:
    """What the policy may know about a site's surroundings."""

    following: Sequence[Insn]                    # the scanned instructions after the site
    targets_inside: Callable[[int, int], bool]   # a branch target in [lo, hi)?
    covering: Callable[[int], object | None]     # the installed patch covering an address


# Instructions that must not run from the stub cache when relocated: they need
# the VMM, fault on purpose, or push/compare an address that would be a stub address.
_NOT_RELOCATABLE = {"hlt", "int", "int3", "into", "int1", "ud2", "div", "idiv", "bound",
                    "loop", "loope", "loopne", "jecxz", "jcxz", "in", "out", "insb", "insw",
                    "insd", "outsb", "outsw", "outsd", "lcall", "ljmp", "retf", "iretd", "iret",
                    "sysenter", "sysexit", "syscall", "cpuid", "rdtsc"}


# The guest's IF is the real IF (docs/fidelity.md, "IF in the real EFLAGS"): cli
# and sti run natively at CPL 1, so a jump patch may carry them into its stub as
# relocated copies, where they do to the real IF what they do in place.
_NATIVE_IF = {"cli", "sti"}


def _shadow_ok(covered: Sequence[Insn], k: int) -> bool:
    """May covered[k], an sti, run in the stub?  Only when the instruction in
    its shadow is covered too: a relocated copy runs as a block of its own, a
    template ends its block with a jmp (patcher/patches.py), so the next block
    starts where the next guest instruction's stub code (or the jump back)
    starts, where the clock's window check lets a waiting interrupt in, after
    exactly one guest instruction, as on the CPU.  With the sti last, the jump
    back would be the shadow's instruction and the guest's next one would run
    outside it."""
    if k + 1 >= len(covered):
        return False
    row = classify_bytes(covered[k + 1].data)
    return row is None or row.name not in _NATIVE_IF


def patched_on_fault(row) -> bool:
    """Whether a trap of this row's instruction at a scanned site may install a jump
    patch (fault-driven patching)."""
    return row is not None and row.bt in (BT.PATCH, BT.PATCH_PRIVILEGED)


def decide(site: Insn, hood: Neighbourhood, *, at_fault: bool = False,
           eager_privileged: bool = True) -> Decision:
    """What to do with the sensitive instruction `site`: when it is scanned
    (`at_fault` False) or when it traps at a scanned site (`at_fault` True)."""
    row = classify_bytes(site.data)
    if row is None:
        return Decision(Action.NONE)
    if hood.covering(site.addr) is not None:
        return Decision(Action.NONE, refused=Refusal.OVERLAPS_PATCH)   # it runs translated
    patchable = row.bt is BT.PATCH or (row.bt is BT.PATCH_PRIVILEGED
                                       and (eager_privileged or at_fault))
    if patchable:
        covered, why = plan_jump(site, hood)
        if why is None:
            return Decision(Action.JUMP, tuple(covered))
        if row.bt is BT.PATCH and not at_fault:
            return Decision(Action.INT3, (site,), why)
        # A privileged site traps by itself: an int3 would cost the same exit.
        return Decision(Action.TRAP, refused=why)
    if row.bt is BT.NATIVE:
        return Decision(Action.NONE)
    return Decision(Action.TRAP)


def decide_branch(addr: int, covering: Callable[[int], object | None]) -> Decision:
    """An indirect branch at `addr` whose target the scanner could not resolve;
    `covering` as in Neighbourhood."""
    if covering(addr) is not None:
        return Decision(Action.NONE, refused=Refusal.OVERLAPS_PATCH)
    return Decision(Action.GUARD)


def plan_jump(site: Insn, hood: Neighbourhood) -> tuple[list[Insn], Refusal | None]:
    """Choose the instructions a jump at `site` covers, or say why it cannot."""
    row = classify_bytes(site.data)
    if row is None or template_for(row.name, site.data) is None:
        return [], Refusal.NEEDS_VMM
    if (site.addr & ~(PAGE - 1)) != ((site.addr + JMP_SIZE - 1) & ~(PAGE - 1)):
        return [], Refusal.PAGE_BOUNDARY
    covered = [site]
    end = site.addr + site.size
    for ins in hood.following:
        if end >= site.addr + JMP_SIZE or ends_flow(covered[-1]):
            break
        if ins.addr != end:
            return [], Refusal.UNSCANNED
        covered.append(ins)
        end += ins.size
    if end < site.addr + JMP_SIZE:
        # The flow ends (ret/jmp/iretd) before 5 bytes: the jump would overwrite
        # bytes after it that an unknown computed branch (an iret frame, a
        # function pointer) may reach.  PATM refused these too.
        if ends_flow(covered[-1]):
            return [], Refusal.EXIT_INSIDE
        return [], Refusal.UNSCANNED
    tail = _closing_iret(covered, end, hood)
    if tail is not None:
        covered.append(tail)
        end += tail.size
    if hood.targets_inside(site.addr + 1, end):
        return [], Refusal.BRANCH_TARGET_INSIDE
    if hood.covering(site.addr) is not None:
        return [], Refusal.OVERLAPS_PATCH      # the site already runs translated
    # Patches that start inside the new coverage are superseded by it (their
    # instructions are translated inline by the new stub): Patcher.install_jump.
    for ins in covered[1:]:
        inner = classify_bytes(ins.data)
        if inner is not None and template_for(inner.name, ins.data) is not None:
            if inner.name in EMULATE_EXITS and ins is not tail:
                return [], Refusal.NEEDS_VMM
            continue
        if inner is not None and inner.name in _NATIVE_IF:
            if inner.name == "sti" and not _shadow_ok(covered, covered.index(ins)):
                return [], Refusal.IRQ_SHADOW
            continue
        if inner is not None and inner.klass is not Klass.CONTROL_FLOW:
            return [], Refusal.NEEDS_VMM       # sensitive, and no template to translate it
        if ins.mnemonic in _NOT_RELOCATABLE or (ins.mnemonic == "call" and not direct(ins)):
            return [], Refusal.UNRELOCATABLE
    return covered, None


def _closing_iret(covered: list[Insn], end: int, hood: Neighbourhood) -> Insn | None:
    """An instruction whose template exits to emulate and decides where the guest
    goes (iretd, EMULATE_EXITS) starts its own patch, except right after the
    jump's 5 bytes, where it may close this one: the stub then ends with its
    template (a terminator), and its exit emulates it at its own address with
    nothing of it done yet, as at the start of a patch.  Its own patch needs 5
    bytes from it, which a flow end rarely leaves (Linux's `iret_to_self`:
    `pushfl; pushl %cs; pushl $1f; iret; 1:` -- 37,878 int3 exits of the iretd
    per 150 M instructions, docs/benchmarks.md "Linux under bt"); here the jump
    writes nothing after it.  Only when the bytes between are covered and
    contiguous, nothing before the iretd ends the flow, and it lies on the
    site's page (a page invalidation then finds the whole patch)."""
    if ends_flow(covered[-1]):
        return None
    nxt = next((i for i in hood.following if i.addr >= end), None)
    if nxt is None or nxt.addr != end or nxt.addr // PAGE != covered[0].addr // PAGE:
        return None
    row = classify_bytes(nxt.data)
    if row is None or row.name not in EMULATE_EXITS or template_for(row.name, nxt.data) is None:
        return None
    if hood.targets_inside(nxt.addr, nxt.addr + 1):
        return None             # a branch target: the jump stays as it was, without it
    return nxt


def direct(ins: Insn) -> bool:
    """A branch whose operand is an immediate target."""
    try:
        int(ins.op_str, 16)
        return True
    except ValueError:
        return False


def ends_flow(ins: Insn) -> bool:
    return ins.mnemonic in ("ret", "jmp", "ljmp", "retf", "iretd", "hlt", "ud2")


# -- reading a site's neighbourhood from a CFG (scanner.cfg.CFG) ---------------------------
def insn_at(cfg, addr: int) -> Insn | None:
    """The scanned instruction at `addr`, or None."""
    b = cfg.block_of(addr)
    if b is None:
        return None
    insns = cfg.graph.nodes[b]["insns"]
    a, size, mnem, op, data = insns[insns.index_of(addr)]
    return Insn(a, size, mnem, op, bytes(data))


def following(cfg, addr: int, count: int = 6) -> list[Insn]:
    """Up to `count` scanned instructions after `addr`, following straight-line
    blocks (a jump patch can cover only contiguous scanned code)."""
    out = []
    b = cfg.block_of(addr)
    cur = addr
    while b is not None and len(out) < count:
        insns = cfg.graph.nodes[b]["insns"]
        for a, size, mnem, op, data in insns:
            if a > addr and a >= cur:
                out.append(Insn(a, size, mnem, op, bytes(data)))
                cur = a + size
        last = insns[-1]
        nxt = last[0] + last[1]
        b = cfg.block_of(nxt)
        if b is not None and b != nxt:
            break
    return out[:count]


def neighbourhood(cfg, addr: int, covering) -> Neighbourhood:
    return Neighbourhood(following(cfg, addr),
                         lambda lo, hi: bool(cfg.branch_targets_in(lo, hi)), covering)

