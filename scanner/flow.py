"""What each capstone mnemonic does to control flow, as the scanner's walks see it.

One table, read by both walks (the Python loop in scanner/scan.py and the C loop
in scanner/_walk.c, which receives it through scanner/native.py).
"""
from __future__ import annotations

JCC = frozenset("ja jae jb jbe je jne jg jge jl jle jo jno jp jnp js jns "
                "jcxz jecxz loop loope loopne".split())
STOP = frozenset("ret retf iret iretd int3 ud0 ud1 ud2 sysenter sysexit".split())

# Control-flow action per capstone mnemonic (prefixed spellings included).
FLOW: dict[str, str] = {}
for _m in JCC:
    FLOW[_m] = "jcc"
for _m in STOP:
    FLOW[_m] = "stop"
FLOW.update({"jmp": "jmp", "call": "call", "ljmp": "ljmp", "lcall": "lcall"})
for _p in ("bnd ", "notrack ", "bnd notrack ", "rep ", "repz ", "repne ", "repnz "):
    for _m in list(JCC) + ["ret", "jmp", "call"]:
        FLOW.setdefault(_p + _m, FLOW[_m])
