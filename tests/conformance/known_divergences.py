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
    dict(name="mov-ss-rpl1-accepted", cause=6,
         body="mov eax, 0x11\nmov ss, ax",
         kinds=("serial", "ram"), ends=(OK, OK), detail="serial: line 16: b'00000001' vs b'00000000'"),
    dict(name="far-jmp-rpl1-accepted", cause=6,                    # the far-transfer form of cause 6
         body=".byte 0xea\n.long s_t\n.word 0x9\ns_t:",
         kinds=("serial", "ram"), ends=(OK, OK), detail="serial: line 16: b'00000001' vs b'00000000'"),
    # Not in issue 15:
    dict(name="undefined-flags-after-a-stub", cause="new-undefined-flags",
         # OF is undefined after bts; under emulate it is whatever Unicorn's lazy flags
         # give; under bt the stub for `mov [esp], cs` in between probably changes that state.
         body="xor eax, edx\nmov word ptr [esp], cs\nbts eax, 25",
         regs={"eax": 577090037, "ebx": 2444712010, "ecx": 3639700191, "edx": 3445702192,
               "esi": 3280387012, "edi": 271041745},
         kinds=("serial", "ram"), ends=(OK, OK), detail="b'00000887' vs b'00000087'"),
]
