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
    # Not in issue 15, and not a bt bug (kept to pin the engine behaviour behind it):
    dict(name="undefined-flags-after-a-stub", cause="by-design-undefined-flags",
         # OF is architecturally undefined after bts.  Unicorn computes it from the
         # lazy-flags state of the translation block: within xor's block, bit 31 of
         # xor's result (emulate: 1); after the stub of `mov [esp], cs` bts starts a
         # block and keeps xor's OF (bt: 0).  tests/runtime/test_unicorn_facts.py pins
         # it; the generator defines the flags after every bt-family instruction.
         body="xor eax, edx\nmov word ptr [esp], cs\nbts eax, 25",
         regs={"eax": 577090037, "ebx": 2444712010, "ecx": 3639700191, "edx": 3445702192,
               "esi": 3280387012, "edi": 271041745},
         kinds=("serial", "ram"), ends=(OK, OK), detail="b'00000887' vs b'00000087'"),
]
