"""A fault while delivering an event (issue 21; kvm-unit-tests eventinj "NP
exception"): the Intel SDM makes it a fault of the instruction that raised the
event, so for a software interrupt (`int n`, int3, into) the frame holds the
address of the `int` itself -- its handler's iret runs the `int` again -- and
the error code's EXT bit (bit 0) is clear; for an exception or a hardware
interrupt EXT is set.  Unicorn reports a software interrupt with EIP already
past it (runtime/vm.py `_int_start`).  Each guest runs in emulate, trap and bt,
and each must agree with the SDM.

The guests: their own GDT (0x18 a ring-0 code segment marked not present, ring-3
code and data, a TSS for the way back to ring 0), an IDT whose fault handlers
write the error code and the pushed EIP and CS to OUT, then repair the cause
(the not-present bit) and iretd, so the event is taken again."""
import struct

import pytest

from conftest import LOAD, assemble, raw_guest, run

MODES = ("emulate", "trap", "bt")
OPS, IDT, GDT, TSS, OUT = 0x200000, 0x201000, 0x203000, 0x204000, 0x40000
HANDLERS = 0x202000
STACK0, STACK3 = 0x90000, 0x70000
LGDT, LIDT = ".byte 0x0f,0x01,0x15\n.int {}\n", ".byte 0x0f,0x01,0x1d\n.int {}\n"
NOTPRESENT_CODE, USER_CODE, USER_DATA, TSS_SEL = 0x18, 0x23, 0x2B, 0x30
GDT_BYTES = b"".join(struct.pack("<II", lo, hi) for lo, hi in [
    (0, 0),
    (0x0000FFFF, 0x00CF9A00),       # 0x08 ring-0 code
    (0x0000FFFF, 0x00CF9200),       # 0x10 ring-0 data
    (0x0000FFFF, 0x00CF1A00),       # 0x18 ring-0 code, not present
    (0x0000FFFF, 0x00CFFA00),       # 0x20 ring-3 code
    (0x0000FFFF, 0x00CFF200),       # 0x28 ring-3 data
    (((TSS << 16) & 0xFFFF0000) | 0x67, (TSS & 0xFF000000) | 0x8900 | ((TSS >> 16) & 0xFF)),   # 0x30 TSS
])
TSS_BYTES = struct.pack("<III", 0, STACK0, 0x10) + bytes(0x5A) + struct.pack("<H", 0x68)


def _gate(handler: int, selector: int = 0x08, type_byte: int = 0x8E) -> bytes:
    return struct.pack("<II", (selector << 16) | (handler & 0xFFFF), (handler & 0xFFFF0000) | (type_byte << 8))


# #NP and #GP: record the vector, error code, pushed EIP and CS; repair the
# cause the error code names; iretd (the event is taken again).
#   OUT+4 last pushed EIP, OUT+8 last pushed CS, OUT+12 how many faults,
#   OUT+24.. their error codes, OUT+40.. their vectors.
# A gate's DPL (a #GP naming the IDT) becomes 3, a gate (#NP naming the IDT)
# or a code segment (#NP naming the GDT) becomes present.
FAULT_HANDLER = f"""
    push 13
    jmp common
np:
    push 11
common:
    pop edx
    pop eax
    mov ecx, [{OUT + 12:#x}]
    mov [{OUT + 24:#x} + ecx*4], eax
    mov [{OUT + 40:#x} + ecx*4], edx
    mov ecx, [esp]
    mov [{OUT + 4:#x}], ecx
    mov ecx, [esp+4]
    mov [{OUT + 8:#x}], ecx
    inc dword ptr [{OUT + 12:#x}]
    cmp dword ptr [{OUT + 12:#x}], 3
    ja fail
    mov ecx, eax
    and ecx, 0xfff8
    test eax, 2
    jz seg
    cmp edx, 13
    je dpl
    or byte ptr [{IDT + 5:#x} + ecx], 0x80
    iretd
dpl:
    or byte ptr [{IDT + 5:#x} + ecx], 0x60
    iretd
seg:
    or byte ptr [{GDT + 5:#x} + ecx], 0x80
    iretd
fail:
    mov al, 9
    out 0xf4, al
"""
GP_ENTRY = 0            # offsets of the two entry points in FAULT_HANDLER
NP_ENTRY = 4            # push 13 (2 bytes) + jmp short (2 bytes)
UD_HANDLER = (f"mov eax, [esp]\nmov [{OUT + 20:#x}], eax\n"      # OUT+20: #UD's pushed EIP
              "add dword ptr [esp], 2\niretd\n")       # #UD reached (its segment was repaired): skip the ud2
EVENT_HANDLER = f"mov eax, [esp]\nmov [{OUT + 16:#x}], eax\nmov al, 0\nout 0xf4, al\n"
H_FAULT, H_EVENT, H_UD = HANDLERS, HANDLERS + 0x200, HANDLERS + 0x400


def _idt(ud_selector: int = 0x08) -> bytes:
    gates = [bytes(8)] * 0x30
    gates[6] = _gate(H_UD, ud_selector)
    gates[13] = _gate(H_FAULT + GP_ENTRY)
    gates[11] = _gate(H_FAULT + NP_ENTRY)
    gates[0x21] = _gate(H_EVENT, NOTPRESENT_CODE)           # its code segment not present (DPL 0)
    gates[3] = gates[4] = _gate(H_EVENT, 0x08, 0x0E)        # int3's and into's: not present
    gates[0x22] = _gate(H_EVENT, 0x08, 0x0E)                # the gate itself not present (DPL 0)
    gates[0x23] = _gate(H_EVENT, 0x08, 0x8E)                # DPL 0: a ring-3 int #GPs
    return b"".join(gates)


SETUP = ("mov esp, 0x90000\n" + LGDT.format(OPS) + LIDT.format(OPS + 8)
         + "mov ax, 0x10\nmov ds, ax\nmov es, ax\nmov ss, ax\n"
         + f"mov ax, {TSS_SEL:#x}\nltr ax\n")
TO_RING3 = (f"push {USER_DATA:#x}\npush {STACK3:#x}\npush 0x2\npush {USER_CODE:#x}\n"
            "mov eax, user\npush eax\n"
            f"mov ax, {USER_DATA:#x}\nmov ds, ax\nmov es, ax\niretd\nuser:\n")


def _guest(site: bytes, ring3: bool = False, ud_selector: int = 0x08):
    # OF set for into: 0x7f + 1 overflows
    pre = SETUP + (TO_RING3 if ring3 else "") + "mov al, 0x7f\nadd al, 1\n"
    pre_bytes = assemble(pre)
    code = pre_bytes + site + assemble("mov al, 7\nout 0xf4, al\n", LOAD + len(pre_bytes) + len(site))
    ops = struct.pack("<HI", len(GDT_BYTES) - 1, GDT) + bytes(2) + struct.pack("<HI", 0x30 * 8 - 1, IDT)
    image = raw_guest("nop", [(OPS, ops), (IDT, _idt(ud_selector)), (GDT, GDT_BYTES), (TSS, TSS_BYTES),
                              (H_FAULT, assemble(FAULT_HANDLER, H_FAULT)),
                              (H_EVENT, assemble(EVENT_HANDLER, H_EVENT)),
                              (H_UD, assemble(UD_HANDLER, H_UD))])
    image.segments[0].data = code
    return image, LOAD + len(pre_bytes)


def _outcome(image, mode):
    vm, res = run(image, mode, max_instructions=100_000)
    eip, cs, faults = struct.unpack("<3I", vm.uc.mem_read(OUT + 4, 12))
    event_eip, ud_eip = struct.unpack("<2I", vm.uc.mem_read(OUT + 16, 8))
    errors = struct.unpack("<4I", vm.uc.mem_read(OUT + 24, 16))[:faults]
    vectors = struct.unpack("<4I", vm.uc.mem_read(OUT + 40, 16))[:faults]
    return res, list(zip(vectors, errors)), eip, cs & 0xFFFF, event_eip, ud_eip


NP, GP = 11, 13
CASES = {
    # name: (site bytes, from ring 3, the faults (vector, error code) in order)
    "int-code-segment-not-present": (b"\xcd\x21", False, [(NP, NOTPRESENT_CODE)]),
    "int-gate-not-present": (b"\xcd\x22", False, [(NP, 0x22 * 8 + 2)]),
    "prefixed-int-code-segment-not-present": (b"\x3e\xcd\x21", False, [(NP, NOTPRESENT_CODE)]),
    "int3-gate-not-present": (b"\xcc", False, [(NP, 3 * 8 + 2)]),
    "into-gate-not-present": (b"\xce", False, [(NP, 4 * 8 + 2)]),
    # the SDM's order: the DPL check before the present bits
    "ring3-int-gate-dpl0": (b"\xcd\x23", True, [(GP, 0x23 * 8 + 2)]),
    "ring3-int-gate-dpl0-then-segment-not-present": (b"\xcd\x21", True, [(GP, 0x21 * 8 + 2), (NP, NOTPRESENT_CODE)]),
    "ring3-int-gate-dpl0-then-gate-not-present": (b"\xcd\x22", True, [(GP, 0x22 * 8 + 2), (NP, 0x22 * 8 + 2)]),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_fault_delivering_int_n_pushes_the_int_and_restarts_it(case, mode):
    site, ring3, faults = CASES[case]
    image, at = _guest(site, ring3)
    res, got, eip, cs, event_eip, _ = _outcome(image, mode)
    assert got == faults                     # EXT clear: the program's own int
    assert eip == at, f"pushed {eip:#x}, the int is at {at:#x}"
    assert cs == (USER_CODE if ring3 else 0x08)
    assert (res.exit_status, event_eip) == (0, at + len(site)), "the restarted int reached its handler"


@pytest.mark.parametrize("mode", MODES)
def test_a_fault_delivering_an_exception_sets_ext_and_pushes_the_faulting_instruction(mode):
    """ud2 with #UD's gate pointing at a not-present segment: #NP(0x18 | EXT)
    at the ud2; the repaired segment then takes the #UD, which skips it."""
    image, at = _guest(b"\x0f\x0b", ud_selector=NOTPRESENT_CODE)
    res, got, eip, cs, _, ud_eip = _outcome(image, mode)
    assert (got, eip, cs, ud_eip) == ([(NP, NOTPRESENT_CODE | 1)], at, 0x08, at)
    assert res.exit_status == 7, res.message        # resumed after ud2: the guest's own end
