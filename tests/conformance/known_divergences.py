"""Shrunk fuzzer reproducers of today's bt divergences, one per distinct cause.

Each entry is data: the program body (bt.fuzz.generator.from_body, run with its
FIXED_REGS unless `regs` is given; `raw` = a whole program for code_image),
the issue-15 cause it matches ("new-..." for causes the issue does not list),
and how it diverges today: the guest-visible difference kinds, how each run
ends (emulate, bt), and a fragment of the difference text.

test_known_divergences.py asserts that each one STILL diverges exactly so.
When a fix makes one agree, that test fails: move the program into the
regression tests (tests/conformance/test_differential.py's AGREEING features or a
dedicated test) and delete its entry here.
"""

# (status, reason) of a normal end through the debug-exit port.
OK = (0, "debug-exit")

KNOWN = [
    dict(name="rmw-xchg-into-code", cause=1,
         body="mov ecx, 0x12345678\nxchg dword ptr [s_k + 1], ecx\ns_k:\nadd eax, 0x11111111",
         kinds=("serial", "ram"), ends=(OK, OK),
         detail="serial: line 3: b'11111111' vs b'12345678'"),   # xchg hands ecx its own value back
    dict(name="rmw-add-into-code", cause=1,
         body="add byte ptr [s_k + 1], 1\ns_k:\nadd eax, 0x11111111",
         kinds=("status", "serial", "regs", "ram"), ends=(OK, (-1, "wall-timeout")),
         detail="no end after"),                                   # an endless loop of exits, no instruction retires
    dict(name="mov-ss-rpl1-accepted", cause=6,
         body="mov eax, 0x11\nmov ss, ax",
         kinds=("serial", "ram"), ends=(OK, OK), detail="serial: line 16: b'00000001' vs b'00000000'"),
    dict(name="far-jmp-rpl1-accepted", cause=6,                    # the far-transfer form of cause 6
         body=".byte 0xea\n.long s_t\n.word 0x9\ns_t:",
         kinds=("serial", "ram"), ends=(OK, OK), detail="serial: line 16: b'00000001' vs b'00000000'"),
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
    dict(name="code-checksum-sees-patches", cause=14,
         body=("mov esi, 0x100000\nmov ecx, fz_end\nsub ecx, 0x100000\nshr ecx, 2\ns_loop:\n"
               "add edx, dword ptr [esi]\nrol edx, 1\nadd esi, 4\ndec ecx\njnz s_loop"),
         kinds=("serial", "regs", "ram"), ends=(OK, OK), detail="serial: line 4:"),
    dict(name="rdtsc-sees-stub-instructions", cause="virtual-time",
         body="rdtsc\nmov esi, eax",
         kinds=("serial", "ram"), ends=(OK, OK), detail="serial: line 1:"),
    dict(name="retired-count-includes-stubs", cause="virtual-time",
         body="cpuid",
         kinds=(), ends=(OK, OK), detail="retired:"),              # every program: bt retires more
    # Not in issue 15:
    dict(name="undefined-flags-after-a-stub", cause="new-undefined-flags",
         # OF is undefined after bts; under emulate it is whatever Unicorn's lazy flags
         # give; under bt the stub for `mov [esp], cs` in between probably changes that state.
         body="xor eax, edx\nmov word ptr [esp], cs\nbts eax, 25",
         regs={"eax": 577090037, "ebx": 2444712010, "ecx": 3639700191, "edx": 3445702192,
               "esi": 3280387012, "edi": 271041745},
         kinds=("serial", "ram"), ends=(OK, OK), detail="b'00000887' vs b'00000087'"),
]
