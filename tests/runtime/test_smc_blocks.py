"""Self-modifying code under bt drops only what a store changed (runtime/smc.py,
scanner/drop.py): the rest of the page keeps its scan and its patches, code
that runs on into the written bytes is scanned again before it runs, and each
guest ends exactly as under emulate."""
from conftest import EXIT, raw_guest, run

REGS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "esp", "eflags")


def same_as_emulate(src: str):
    img = raw_guest(src)
    _, emu = run(img, "emulate")
    vm, bt = run(img, "bt")
    assert bt.exit_status == emu.exit_status == 0, bt.message
    assert bt.serial == emu.serial
    assert {r: bt.regs[r] for r in REGS} == {r: emu.regs[r] for r in REGS}
    return vm, bt


def test_an_ftrace_style_nop_keeps_the_patch_elsewhere_on_the_page():
    # f's `call h` becomes a 5-byte NOP (what ftrace does to `call __fentry__`);
    # g's pushfd, patched, lies on the same page and stays patched.
    vm, bt = same_as_emulate(
        "mov esp, 0x90000\nxor esi, esi\n"
        "call f\ncall g\nmov ebx, eax\n"
        "mov dword ptr [f], 0x00441f0f\nmov byte ptr [f + 4], 0\n"     # nop dword ptr [eax + eax]
        "call f\ncall g\nmov ecx, eax\n" + EXIT +
        "f: call h\nret\n"
        "h: inc esi\nret\n"
        "g: pushfd\npop eax\nret\n")
    assert bt.regs["esi"] == 1
    csam, patches = bt.extra["csam"], bt.extra["patches"]
    assert csam["smc_invalidations"] >= 1
    assert patches["installed"]["pushfd"] == 1 and patches["removed"] == 0
    assert csam["pages_rescanned"] == 0
    assert 1 <= csam["smc_blocks_dropped"] <= 3


def test_code_that_runs_on_into_the_written_bytes_is_scanned_again():
    # `a` has no branch before `b`, which is a block of its own (called
    # directly).  The guest writes a pushfd into b: a translated block from a
    # runs on into b's bytes without a block start there, so `a` must go
    # too -- else the new pushfd would run unpatched and push the real IOPL.
    vm, bt = same_as_emulate(
        "mov esp, 0x90000\n"
        "call a\ncall b\n"
        "mov byte ptr [b], 0x9c\nmov byte ptr [b + 1], 0x5b\n"       # pushfd; pop ebx
        "call a\n" + EXIT +
        "a: mov eax, 1\nmov edx, 2\n"
        "b: nop\nnop\nret\n")
    assert bt.extra["csam"]["smc_blocks_dropped"] >= 2
    assert bt.extra["patches"]["installed"]["pushfd"] == 1


def test_a_retargeted_jump_keeps_the_old_targets_block():
    # Only the jump's displacement changes: its block goes, the old target's
    # block stays scanned, the new target is scanned when the jump is taken.
    vm, bt = same_as_emulate(
        "mov esp, 0x90000\nxor esi, esi\n"
        "call j\n"
        "mov byte ptr [j + 1], t2 - (j + 2)\n"                        # jmp rel8
        "call j\n" + EXIT +
        "j: jmp t1\n"
        "t1: add esi, 1\nret\n"
        "t2: add esi, 0x100\nret\n")
    assert bt.regs["esi"] == 0x101
    assert bt.extra["csam"]["pages_rescanned"] == 0


def test_in_spans_is_the_look_at_every_span():
    import random
    from runtime.smc import in_spans
    rnd = random.Random(5)
    for _ in range(300):
        spans = [(lo, lo + rnd.randrange(1, 40)) for lo in (rnd.randrange(500) for _ in range(rnd.randrange(6)))]
        points = rnd.sample(range(560), rnd.randrange(30))
        assert in_spans(points, spans) == [g for g in points if any(lo <= g < hi for lo, hi in spans)]
