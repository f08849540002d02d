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
    dict(name="lss-valid-selector-faults", cause=5,
         body="mov word ptr [0x180014], 0x10\nmov dword ptr [0x180010], esp\nlss esp, [0x180010]\nmov ebx, esp",
         kinds=("serial", "regs", "ram"), ends=(OK, OK), detail="ebx 0x90000 vs 0x5e6f7081"),
    dict(name="mov-ss-rpl1-accepted", cause=6,
         body="mov eax, 0x11\nmov ss, ax",
         kinds=("serial", "ram"), ends=(OK, OK), detail="serial: line 16: b'00000001' vs b'00000000'"),
    dict(name="far-jmp-rpl1-accepted", cause=6,                    # the far-transfer form of cause 6
         body=".byte 0xea\n.long s_t\n.word 0x9\ns_t:",
         kinds=("serial", "ram"), ends=(OK, OK), detail="serial: line 16: b'00000001' vs b'00000000'"),
    dict(name="accessed-bit-not-set", cause=7,
         body="mov eax, 0x38\nmov es, ax\nmov ecx, 0x38\nlar edx, ecx",
         kinds=("serial", "regs", "ram"), ends=(OK, OK), detail="edx 0xc09300 vs 0xc09200"),
    dict(name="dr6-reset-value", cause=8,
         body="mov esi, dr6",
         kinds=("serial", "ram"), ends=(OK, OK), detail="b'ffff0ff0' vs b'00000000'"),
    dict(name="iretd-to-ring3-keeps-gs", cause=13,
         body=("mov dword ptr [0x180008], esp\nmov dword ptr [0x180000], s_back\npush 0x23\npush 0x70000\n"
               "push 0x2\npush 0x1b\nmov eax, s_user\npush eax\nmov eax, 0x23\nmov ds, ax\nmov es, ax\niretd\n"
               "s_user:\nmov eax, fs\nmov ebx, gs\nint 0x80\ns_back:\nmov ecx, 0x10\nmov ds, cx\nmov es, cx"),
         kinds=("serial", "regs", "ram"), ends=(OK, OK), detail="ebx 0x0 vs 0x10"),
    dict(name="code-checksum-sees-patches", cause=14,
         body=("mov esi, 0x100000\nmov ecx, fz_end\nsub ecx, 0x100000\nshr ecx, 2\ns_loop:\n"
               "add edx, dword ptr [esi]\nrol edx, 1\nadd esi, 4\ndec ecx\njnz s_loop"),
         kinds=("serial", "regs", "ram"), ends=(OK, OK), detail="serial: line 4:"),
    dict(name="invlpg-ends-the-run", cause=15,
         body="invlpg byte ptr [0x180200]",
         kinds=("status", "serial", "regs", "ram"), ends=(OK, (70, "vmm-error")), detail="ctl_flush_tlb"),
    dict(name="guest-reads-the-vmm", cause="vmm-isolation",
         body="mov eax, dword ptr [0xff00000c]",
         kinds=("status", "serial", "regs", "ram"), ends=((125, "unmapped-access"), OK),
         detail="125 unmapped-access vs 0 debug-exit"),
    dict(name="guest-writes-the-vmm", cause="vmm-isolation",
         body="mov dword ptr [0xff001000], 0x12345678",
         kinds=("status", "serial", "regs", "ram"), ends=((125, "unmapped-access"), OK),
         detail="125 unmapped-access vs 0 debug-exit"),
    dict(name="rdtsc-sees-stub-instructions", cause="virtual-time",
         body="rdtsc\nmov esi, eax",
         kinds=("serial", "ram"), ends=(OK, OK), detail="serial: line 1:"),
    dict(name="retired-count-includes-stubs", cause="virtual-time",
         body="cpuid",
         kinds=(), ends=(OK, OK), detail="retired:"),              # every program: bt retires more
    # Not in issue 15:
    dict(name="smsw-at-ring3-faults-forever", cause="new-ring3-stub",
         body=("mov dword ptr [0x180008], esp\nmov dword ptr [0x180000], s_back\npush 0x23\npush 0x70000\n"
               "push 0x2\npush 0x1b\nmov eax, s_user\npush eax\nmov eax, 0x23\nmov ds, ax\nmov es, ax\niretd\n"
               "s_user:\nsmsw eax\nint 0x80\ns_back:\nmov ecx, 0x10\nmov ds, cx\nmov es, cx"),
         kinds=("status", "serial", "regs", "ram"), ends=(OK, (4, "debug-exit")),
         detail="0 debug-exit vs 4 debug-exit"),                   # 4: the guest's handler saw > 64 faults
    dict(name="iretd-to-bad-frame-ends-the-run", cause="new-iret-exception",
         body="push 0x1b\npush eax\nmov eax, 0x23\niretd",
         kinds=("status", "serial", "regs", "ram"), ends=(OK, (70, "vmm-error")),
         detail="UC_ERR_EXCEPTION"),
    dict(name="undefined-flags-after-a-stub", cause="new-undefined-flags",
         # OF is undefined after bts; under emulate it is whatever Unicorn's lazy flags
         # give; under bt the stub for `mov [esp], cs` in between probably changes that state.
         body="xor eax, edx\nmov word ptr [esp], cs\nbts eax, 25",
         regs={"eax": 577090037, "ebx": 2444712010, "ecx": 3639700191, "edx": 3445702192,
               "esi": 3280387012, "edi": 271041745},
         kinds=("serial", "ram"), ends=(OK, OK), detail="b'00000887' vs b'00000087'"),
    dict(name="cli-stub-uses-the-guest-stack", cause="new-stub-stack",
         raw="cli\nmov esp, 0x90000\nmov al, 0\nout 0xf4, al",    # esp is 0 at a raw image's entry
         kinds=("status", "regs"), ends=(OK, (125, "unmapped-access")), detail="0xfffffffc"),
]
