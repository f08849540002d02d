"""Flags after cmpxchg8b, checked against values worked out by hand in every mode.

The differential fuzzer's `atomics` feature (bt/fuzz/features.py) compares bt
and trap with emulate, but the clock's cmpxchg8b hook (runtime/clock.py
`_hook_fix_sites`) sits under all three modes alike, so a flags bug there would
agree with itself.  These programs pin the flags themselves: cmpxchg8b changes
ZF only, every other arithmetic flag is the one the add before it left.
"""
import pytest

from bt.fuzz import guest as G
from bt.fuzz.differential import observe_run
from bt.fuzz.generator import from_body
from bt.machine import MachineConfig

ARITH = 0x8D5          # OF SF ZF AF PF CF
OUT = G.SCRATCH + 0x80

# (add's operand, its increment, qword equal to edx:eax?, expected flags after cmpxchg8b)
CASES = [
    (0x7FFFFFFF, 1, False, 0x894),   # OF SF AF PF from the add, ZF clear (not equal)
    (0x7FFFFFFF, 1, True, 0x8D4),    # the same, ZF set (equal)
    (0xFFFFFFFF, 1, False, 0x015),   # CF AF PF kept, the add's ZF cleared by cmpxchg8b
    (0xFFFFFFFF, 1, True, 0x055),
]


def _body(value: int, inc: int, equal: bool, lock: bool) -> str:
    return f"""
        mov dword ptr [ebp], 5
        mov dword ptr [ebp + 4], {1 if equal else 2}
        mov eax, 5
        mov edx, 1
        mov ebx, 0x11111111
        mov ecx, 0x22222222
        mov esi, {value:#x}
        add esi, {inc}
        {'lock ' if lock else ''}cmpxchg8b qword ptr [ebp]
        pushfd
        pop dword ptr [{OUT:#x}]
        mov dword ptr [{OUT + 4:#x}], eax
        mov dword ptr [{OUT + 8:#x}], edx
        mov edi, dword ptr [ebp]
        mov dword ptr [{OUT + 12:#x}], edi
    """


@pytest.mark.parametrize("mode", ("emulate", "trap", "bt"))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_flags_after_cmpxchg8b_are_the_adds_but_zf(mode, case):
    value, inc, equal, flags = CASES[case]
    image = from_body(_body(value, inc, equal, lock=case % 2 == 1)).image()
    obs = observe_run(image, MachineConfig(mem_mib=8), mode, 200_000, keep_ram=True)
    assert obs.exit_status == 0
    word = lambda a: int.from_bytes(obs.ram[a:a + 4], "little")
    assert word(OUT) & ARITH == flags
    # equal: ecx:ebx stored, edx:eax kept; not equal: edx:eax loaded from memory
    assert (word(OUT + 4), word(OUT + 8)) == (5, 1 if equal else 2)
    assert word(OUT + 12) == (0x11111111 if equal else 5)
