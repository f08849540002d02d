"""Fuzzer reproducers of bt divergences that are fixed: each must now agree.

Entries moved here from known_divergences.py when a fix made them agree (same
data; `kinds`/`ends`/`detail` record how they diverged before the fix).
test_regressions.py runs each under emulate and bt and requires no
guest-visible difference.
"""
from known_divergences import OK

FIXED = [
    dict(name="pushf16-clears-upper-eflags", cause=2,
         body="push 0x240002\npopfd\n.byte 0x66, 0x9c\npop ax\npushfd\npop ebx",
         kinds=("serial", "regs", "ram"), ends=(OK, OK), detail="ebx 0x240002 vs 0x2"),
    dict(name="mov-r16-cs-zero-extends", cause=3,
         body="mov ebx, 0x12345678\nmov bx, cs",
         kinds=("serial", "regs", "ram"), ends=(OK, OK), detail="ebx 0x12340008 vs 0x8"),
    dict(name="smsw-r32-writes-32-bits", cause=4,
         body="smsw esi",
         kinds=("serial", "ram"), ends=(OK, OK), detail="b'1a2b0011' vs b'00000011'"),
    # Causes 1, 9, 10: CSAM on native hooks (runtime/csam.py: the block check in
    # runtime/_clock.c, stores into code complete once and invalidate afterwards).
    dict(name="rmw-xchg-into-code", cause=1,
         body="mov ecx, 0x12345678\nxchg dword ptr [s_k + 1], ecx\ns_k:\nadd eax, 0x11111111",
         kinds=("serial", "ram"), ends=(OK, OK),
         detail="serial: line 3: b'11111111' vs b'12345678'"),   # xchg hands ecx its own value back
    dict(name="rmw-add-into-code", cause=1,
         body="add byte ptr [s_k + 1], 1\ns_k:\nadd eax, 0x11111111",
         kinds=("status", "serial", "regs", "ram"), ends=(OK, (-1, "wall-timeout")),
         detail="no end after"),                                   # an endless loop of exits, no instruction retires
    dict(name="computed-ret-unscanned", cause=9,
         body="mov eax, s_t\npush eax\nret\ns_t:\nmov ebx, cs",
         kinds=("serial", "regs", "ram"), ends=(OK, OK), detail="ebx 0x8 vs 0x9"),
    dict(name="call-through-changed-pointer-after-smc", cause=10,
         body=("mov dword ptr [s5_k + 1], 0x46004dbf\ns5_k:\nadd eax, 0x11111111\n"
               "mov dword ptr [0x18000c], s9_a\nmov dword ptr [0x18000c], s9_b\ncall dword ptr [0x18000c]\n"
               "# out of line:\ns9_a:\ns9_b:\npushfd\npop edx\nret"),
         regs={"eax": 3267388414, "ebx": 597617956, "ecx": 2508523437, "edx": 4150789711,
               "esi": 245009909, "edi": 1427193283},
         kinds=("serial", "regs", "ram"), ends=(OK, OK), detail="edx 0x17 vs 0x217"),   # the host's IF
]
