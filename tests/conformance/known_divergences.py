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
    # Campaign --programs 2000 --seed 3030, program 1825 (docs/fidelity.md).  Here
    # the *reference* is wrong: the add runs with the immediate the store before it
    # rewrote (a bare engine and bt both give its CF/OF: 0x817), yet emulate's
    # EFLAGS afterwards is 0x16, as if computed from a stale lazy-flags state.  It
    # needs the code store, the descriptor store, `mov fs`, `out` (the clock's
    # stop-after-I/O code hook lands on the rdtsc) and rdtsc; not reproduced on a
    # bare engine yet.  Its trap half (a VMM error: the shadow GDT missed the
    # store) is fixed: tests/runtime/test_gdt_watch.py.
    dict(name="emulate-stale-flags-after-code-store", cause="new-emulate-stale-flags",
         body=("mov dword ptr [s8_k + 1], 0xc750faae\ns8_k: add eax, 0x11111111\n"
               "mov dword ptr [0x10034], 0xcf9318\nmov eax, 0x30\nmov fs, ax\nout 0x80, al\nrdtsc"),
         kinds=("serial", "ram"), ends=(OK, OK), detail="b'00000016' vs b'00000817'"),
]
