"""Patch churn (issue 18, "Time and memory"): code that keeps rewriting itself
next to its sensitive instructions is re-patched after every write.  The stub of
an identical removed patch is reused (no assembly, no new stub bytes), and the
stubs kept for reuse are bounded (beyond patcher/patches.py RETIRED_STUB_BYTES they are freed and
their space reused), so the stub cache stays bounded; emulate and bt agree."""
from conftest import raw_guest, run

REGS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "esp")


def _serial_eax() -> str:
    return "".join("mov dx, 0x3f8\nout dx, al\nshr eax, 8\n" for _ in range(4))


def rewrite_imm(rounds: int) -> str:
    """benchmarks/soak.py's rewrite-imm loop, ending after `rounds` rounds and
    printing the last immediate: the patch (pushfd popfd cli sti) covers the same
    bytes every round; the rewritten `mov` is outside it."""
    return (f"mov esp, 0x90000\nmov ecx, {rounds}\n"
            "l: mov eax, 0x12345678\ninc dword ptr [l + 1]\npushfd\npopfd\ncli\nsti\n"
            "dec ecx\njnz l\n" + _serial_eax() + "mov al, 0\nout 0xf4, al\nhlt\n")


def rewrite_covered(rounds: int) -> str:
    """The rewritten immediate is inside the patch's covered bytes (pushfd, then
    the `mov`): every re-patch has new guest bytes, so a new stub each round."""
    return (f"mov esp, 0x90000\nmov ecx, {rounds}\n"
            "l: pushfd\nmov eax, 0x12345678\npopfd\ninc dword ptr [l + 2]\n"
            "dec ecx\njnz l\n" + _serial_eax() + "mov al, 0\nout 0xf4, al\nhlt\n")


def _both(src: str):
    img = raw_guest(src)
    _, emu = run(img, "emulate")
    vm, bt = run(img, "bt")
    assert emu.exit_status == bt.exit_status == 0, bt.message
    assert bt.serial == emu.serial
    assert {r: bt.regs[r] for r in REGS} == {r: emu.regs[r] for r in REGS}
    return vm, bt


def test_rewrite_imm_keeps_one_stub_whatever_the_rounds():
    short_vm, short = _both(rewrite_imm(50))
    long_vm, long = _both(rewrite_imm(1500))
    assert long.serial == (0x12345678 + 1499).to_bytes(4, "little")
    p_short, p_long = short.extra["patches"], long.extra["patches"]
    # Each write drops only the rewritten `mov`'s block (runtime/smc.py): the
    # patch goes once, at the first write, when the `mov` and the pushfd were
    # one block; from then on the patch's block is a block of its own and stays.
    assert long.extra["csam"]["smc_invalidations"] >= 1500
    assert p_long["removed"] == p_short["removed"] == 1
    assert p_long["stub_reuses"] == p_long["removed"]
    assert p_long["stub_cache_bytes"] == p_short["stub_cache_bytes"]   # not one byte more
    assert p_long["retired_stubs"] <= 1 and p_long["enabled"] == p_short["enabled"]


def test_new_guest_bytes_every_round_keep_the_stub_cache_bounded(monkeypatch):
    """pushfd's patch covers the rewritten `mov` (a new stub every round); the
    popfd's after it does not (reused).  With the bound at 4 KiB, kept stubs are
    freed and their space reused: the cache stops growing."""
    import patcher.patches
    monkeypatch.setattr(patcher.patches, "RETIRED_STUB_BYTES", 4096)
    _, short = _both(rewrite_covered(300))
    _, long = _both(rewrite_covered(900))
    p, q = short.extra["patches"], long.extra["patches"]
    assert q["installed"]["pushfd"] >= 900 and q["stub_reuses"] >= 899   # the popfd's stub
    assert q["stubs_freed"] >= 780                          # the pushfd's, beyond the bound
    assert q["stub_cache_bytes"] == p["stub_cache_bytes"] < 4096 + 2048
    assert q["retired_stubs"] == p["retired_stubs"]
