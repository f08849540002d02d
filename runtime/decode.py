"""Decoding the guest instruction at a fault site, once.

Faults are hot in `trap` mode (every cli, sti, iret, in, out...), so decodes are
cached by the instruction's bytes: the same bytes decode the same way, and the
cache survives the guest rewriting its code (new bytes -> new entry).
Operand addresses are computed here from the capstone detail of memory operands.
"""
from __future__ import annotations

from dataclasses import dataclass

import capstone
from capstone import x86_const as C
from unicorn import x86_const as X

from bt.catalog import classify_bytes

_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_CS.detail = True

_REG = {
    C.X86_REG_EAX: X.UC_X86_REG_EAX, C.X86_REG_EBX: X.UC_X86_REG_EBX,
    C.X86_REG_ECX: X.UC_X86_REG_ECX, C.X86_REG_EDX: X.UC_X86_REG_EDX,
    C.X86_REG_ESI: X.UC_X86_REG_ESI, C.X86_REG_EDI: X.UC_X86_REG_EDI,
    C.X86_REG_EBP: X.UC_X86_REG_EBP, C.X86_REG_ESP: X.UC_X86_REG_ESP,
    C.X86_REG_AX: X.UC_X86_REG_AX, C.X86_REG_BX: X.UC_X86_REG_BX,
    C.X86_REG_CX: X.UC_X86_REG_CX, C.X86_REG_DX: X.UC_X86_REG_DX,
    C.X86_REG_SI: X.UC_X86_REG_SI, C.X86_REG_DI: X.UC_X86_REG_DI,
    C.X86_REG_BP: X.UC_X86_REG_BP, C.X86_REG_SP: X.UC_X86_REG_SP,
    C.X86_REG_AL: X.UC_X86_REG_AL, C.X86_REG_BL: X.UC_X86_REG_BL,
    C.X86_REG_CL: X.UC_X86_REG_CL, C.X86_REG_DL: X.UC_X86_REG_DL,
    C.X86_REG_AH: X.UC_X86_REG_AH, C.X86_REG_BH: X.UC_X86_REG_BH,
    C.X86_REG_CH: X.UC_X86_REG_CH, C.X86_REG_DH: X.UC_X86_REG_DH,
    C.X86_REG_CS: X.UC_X86_REG_CS, C.X86_REG_DS: X.UC_X86_REG_DS,
    C.X86_REG_ES: X.UC_X86_REG_ES, C.X86_REG_FS: X.UC_X86_REG_FS,
    C.X86_REG_GS: X.UC_X86_REG_GS, C.X86_REG_SS: X.UC_X86_REG_SS,
}
_CR = {getattr(C, f"X86_REG_CR{i}"): i for i in (0, 2, 3, 4)}
_DR = {getattr(C, f"X86_REG_DR{i}"): i for i in range(8)}
_SEG_NAMES = {C.X86_REG_CS: "cs", C.X86_REG_DS: "ds", C.X86_REG_ES: "es",
              C.X86_REG_FS: "fs", C.X86_REG_GS: "gs", C.X86_REG_SS: "ss"}


@dataclass(frozen=True)
class Operand:
    kind: str            # reg | imm | mem | cr | dr | seg
    size: int
    reg: int = 0         # unicorn register id (reg/seg), or CR/DR number
    imm: int = 0
    seg: int = 0         # unicorn segment register for mem (0 = default)
    base: int = 0
    index: int = 0
    scale: int = 1
    disp: int = 0


@dataclass(frozen=True)
class Insn:
    mnemonic: str
    op_str: str
    size: int
    operands: tuple[Operand, ...]
    prefixes: tuple[int, ...]
    opsize16: bool
    rep: bool
    data: bytes = b""    # the instruction's bytes
    row: object = None   # its bt.catalog row (None = not catalogued), classified once per decode


_by_bytes: dict[bytes, Insn] = {}


def decode(code: bytes) -> Insn | None:
    """Decode the first instruction of `code` (None when undecodable)."""
    # `code` that is exactly one instruction's bytes (a patch's copy of the
    # instruction it covers: every int3 exit) is that instruction: an x86
    # instruction's meaning depends on its own bytes only.  No capstone call.
    if type(code) is bytes:
        hit = _by_bytes.get(code)
        if hit is not None:
            return hit
    for ci in _CS.disasm(code, 0, 1):
        raw = bytes(ci.bytes)
        hit = _by_bytes.get(raw)
        if hit is None:
            hit = _by_bytes[raw] = _convert(ci)
        return hit
    return None


class SiteDecoder:
    """Decode at a guest address, cached per address and checked against the
    current bytes, so a fault site that exits repeatedly is decoded once and a
    rewritten site is decoded anew."""

    def __init__(self, read, check=None):
        self._read = read                    # read(linear, size) -> bytes | None
        self._check = check or read          # cheaper read to re-validate a cached site
        self._sites: dict[int, tuple[bytes, Insn]] = {}

    def at(self, eip: int) -> Insn | None:
        hit = self._sites.get(eip)
        if hit is not None:
            raw, insn = hit
            if self._check(eip, len(raw)) == raw:
                return insn
        code = self._read(eip, 15) or self._read(eip, 0x1000 - (eip & 0xFFF)) or b""
        insn = decode(code)
        if insn is not None:
            self._sites[eip] = (code[:insn.size], insn)
        return insn


def _convert(ci) -> Insn:
    ops = []
    for op in ci.operands:
        if op.type == C.X86_OP_REG:
            if op.reg in _CR:
                ops.append(Operand("cr", 4, reg=_CR[op.reg]))
            elif op.reg in _DR:
                ops.append(Operand("dr", 4, reg=_DR[op.reg]))
            elif op.reg in _SEG_NAMES:
                ops.append(Operand("seg", 2, reg=_REG[op.reg]))
            else:
                ops.append(Operand("reg", op.size, reg=_REG.get(op.reg, 0)))
        elif op.type == C.X86_OP_IMM:
            ops.append(Operand("imm", op.size, imm=op.imm))
        elif op.type == C.X86_OP_MEM:
            m = op.mem
            ops.append(Operand("mem", op.size, seg=_REG.get(m.segment, 0),
                               base=_REG.get(m.base, 0), index=_REG.get(m.index, 0),
                               scale=m.scale, disp=m.disp))
    prefixes = tuple(p for p in ci.prefix if p)
    return Insn(ci.mnemonic, ci.op_str, ci.size, tuple(ops), prefixes,
                0x66 in prefixes, bool({0xF3, 0xF2} & set(prefixes)), bytes(ci.bytes),
                classify_bytes(bytes(ci.bytes)))


def effective_address(uc, op: Operand, seg_base) -> int:
    """Linear address of a memory operand. `seg_base(unicorn_seg_reg)` gives a base."""
    addr = op.disp
    if op.base:
        addr += uc.reg_read(op.base)
    if op.index:
        addr += uc.reg_read(op.index) * op.scale
    seg = op.seg or (X.UC_X86_REG_SS if op.base in (X.UC_X86_REG_ESP, X.UC_X86_REG_EBP)
                     else X.UC_X86_REG_DS)
    return (seg_base(seg) + addr) & 0xFFFFFFFF
