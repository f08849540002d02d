"""Naming a divergence: the instruction (capstone + the catalog) and what it did
differently, in words a researcher recognises ("pushfd at 0x10000b leaked the host IF")."""
from __future__ import annotations

from capstone import Cs, CS_ARCH_X86, CS_MODE_32

from bt.catalog import classify_bytes
from bt.x86 import EFLAGS_NAMES, IOPL_MASK

_CS = Cs(CS_ARCH_X86, CS_MODE_32)

FLAG_MNEMONICS = ("pushfd", "pushf", "popfd", "popf")


def flag_names(bits: int) -> str:
    names = [n for bit, n in sorted(EFLAGS_NAMES.items()) if bits & bit]
    if bits & IOPL_MASK:
        names.append("IOPL")
    return "/".join(names) or "no flag"


def instruction(code: bytes | None, addr: int) -> dict:
    """capstone text and catalog facts of the instruction at `addr` (code = its bytes)."""
    info = {"address": addr, "bytes": "", "text": "(unreadable)", "mnemonic": "?",
            "catalog": None, "class": None, "robin_irvine": None}
    if not code:
        return info
    insn = next(_CS.disasm(code, addr, 1), None)
    if insn is None:
        info.update(bytes=code[:1].hex(), text="(undecodable)")
        return info
    info.update(bytes=bytes(insn.bytes).hex(), mnemonic=insn.mnemonic,
                text=f"{insn.mnemonic} {insn.op_str}".strip())
    row = classify_bytes(bytes(insn.bytes))
    if row is not None:
        info.update(catalog=row.name, **{"class": row.klass.value},
                    robin_irvine=row.ri_group.value if row.ri_group else None)
    return info


def _value_effect(insn: dict, where: str, emu: int, other: int, mode: str) -> str:
    """One location's difference, phrased by what the instruction is."""
    diff = emu ^ other
    mn = insn["mnemonic"]
    if mn in FLAG_MNEMONICS or where == "eflags":
        names = flag_names(diff)
        if mn in ("pushfd", "pushf"):
            return f"leaked the host {names} ({where} = {other:#x} under {mode}, {emu:#x} under emulate)"
        if mn in ("popfd", "popf"):
            return f"ignored the guest's {names} change ({where} = {other:#x} under {mode}, {emu:#x} under emulate)"
        return f"left {names} different ({where} = {other:#x} under {mode}, {emu:#x} under emulate)"
    if diff and diff <= 3 and emu <= 0xFFFF and other <= 0xFFFF:
        return (f"leaked the real privilege level, selector RPL {other & 3} instead of {emu & 3} "
                f"({where} = {other:#x} under {mode}, {emu:#x} under emulate)")
    return f"gave {where} = {other:#x} under {mode}, {emu:#x} under emulate"


def effects(insn: dict, reg_diffs: dict, mem_diffs: list, mode: str) -> list[str]:
    """Sentences for every differing register and RAM range (`mem_diffs`: dicts with
    address, emulate and other bytes)."""
    out = []
    for name, (emu, other) in reg_diffs.items():
        if name == "eip":
            out.append(f"continued at {other:#x} under {mode}, {emu:#x} under emulate")
        else:
            out.append(_value_effect(insn, name, emu, other, mode))
    for m in mem_diffs:
        a, e, o = m["address"], bytes.fromhex(m["emulate"]), bytes.fromhex(m["other"])
        lo = a & ~3
        if len(e) <= 4 and a + len(e) <= lo + 4 and "emulate_dword" in m:
            out.append(_value_effect(insn, f"[{lo:#x}]", m["emulate_dword"], m["other_dword"], mode))
        else:
            out.append(f"stored {o.hex()} at {a:#x} under {mode}, {e.hex()} under emulate")
    return out


def headline(insn: dict, effect_list: list[str]) -> str:
    text = f"{insn['text']} at {insn['address']:#x}"
    if effect_list:
        text += " " + effect_list[0]
        if len(effect_list) > 1:
            text += f" (+{len(effect_list) - 1} more difference{'s' if len(effect_list) > 2 else ''})"
    else:
        text += " behaved differently"
    return text


def catalog_note(insn: dict) -> str:
    if insn["catalog"] is None:
        return "not in the catalog of sensitive instructions"
    note = f"catalog row {insn['catalog']} ({insn['class']})"
    if insn["robin_irvine"]:
        note += f"; Robin & Irvine {insn['robin_irvine']} instruction"
    return note
