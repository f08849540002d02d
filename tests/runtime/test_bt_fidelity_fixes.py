"""bt fidelity fixes, through the real VM: each minimal program runs under
emulate (the reference), trap and bt, and bt both ways a site can be patched:
a jump into the stub template, and the int3 fallback that runs the emulation
routine (forced by a branch into the bytes after a site shorter than the 5-byte
jump, which refuses the jump).  Results are collected in registers other than EAX (EXIT clobbers AL).
trap runs these instructions natively at CPL 1, so it keeps its documented
leaks (the real RPL, the real CR0, the VMM's IDTR); only what trap gets right
is pinned for it."""
import pytest

from conftest import EXIT, LOAD, assemble, raw_guest, run

REGS = ("ebx", "ecx", "edx", "esi", "edi")


def program(setup: str, site: str, collect: str, int3: bool) -> str:
    # `je after` is never taken (ESP is not 0) but makes `after` a branch target
    # inside the bytes a jump patch at the site would cover.
    # `mov edi, 0` (5 bytes, flags untouched) keeps the site out of the patch of
    # a sensitive instruction in `setup` (a patch covers at least 5 bytes).
    guard = "cmp esp, 0\nje after\n" if int3 else ""
    return (f"mov esp, 0x90000\n{guard}{setup}\nmov edi, 0\n{site}\nafter:\n{collect}\n"
            "xor eax, eax\n" + EXIT)


def run_all(setup, site, collect, key, int3):
    src = program(setup, site, collect, int3)
    img = raw_guest(src)
    out = {}
    for mode in ("emulate", "trap", "bt"):
        vm, res = run(img, mode)
        assert (res.exit_status, res.reason) == (0, "debug-exit"), (mode, res.message)
        out[mode] = {r: res.regs[r] for r in REGS}
    # The site itself (row `key`) ran translated, as a jump patch or an int3 patch.
    # (`after:` only resolves the guard's short `je`, as in the whole program.)
    addr = LOAD + len(assemble(src.split(f"\n{site}\n")[0] + "\nafter:\n"))
    patch = vm.mode.patcher.covering(addr)
    assert patch is not None and patch.site == addr and patch.name == key, patch
    assert patch.kind == ("int3" if int3 else "jump"), patch
    return out


@pytest.mark.parametrize("int3", [False, True], ids=["jump", "int3"])
def test_16_bit_pushf_keeps_eflags_31_16(int3):
    """66 9C pushes the low word; AC and ID (bits 18, 21) stay set afterwards."""
    out = run_all("xor ecx, ecx\npushfd\nor dword ptr [esp], 0x240000\npopfd", "pushf",
                  "pushfd\npop ebx\npop cx", "pushfd", int3)
    assert hex(out["emulate"]["ebx"]) == hex(0x240046)
    assert out["bt"] == out["emulate"]
    assert out["trap"]["ebx"] & 0xFFFF0000 == 0x240000


@pytest.mark.parametrize("int3", [False, True], ids=["jump", "int3"])
@pytest.mark.parametrize("site,key,low", [("mov si, cs", "mov_from_cs", 0x08),
                                          ("mov si, ss", "mov_from_ss", 0x10)])
def test_mov_r16_from_cs_ss_keeps_bits_31_16(int3, site, key, low):
    out = run_all("mov esi, 0xdeadbeef", site, "", key, int3)
    assert hex(out["emulate"]["esi"]) == hex(0xDEAD0000 | low)
    assert out["bt"] == out["emulate"]
    assert out["trap"]["esi"] == 0xDEAD0000 | low | 1        # leak: ring compression's RPL 1


SMSW_SETUP = "mov eax, cr0\nor eax, 0x50020\nmov cr0, eax\nmov ebx, 0xdeadbeef"


@pytest.mark.parametrize("int3", [False, True], ids=["jump", "int3"])
def test_smsw_r32_writes_cr0_whole(int3):
    """smsw r32 writes the whole CR0 as the CPU does (Unicorn writes 16 bits;
    emulate completes it: runtime/smswfix.py).  CR0.WP and AM (bits 16, 18)
    set so that the high word is not zero."""
    out = run_all(SMSW_SETUP, "smsw ebx", "", "smsw", int3)
    assert hex(out["emulate"]["ebx"]) == hex(0x00050031)
    assert out["bt"] == out["emulate"]
    assert out["trap"]["ebx"] >> 16 == 0x0005                # the real CR0's high word


@pytest.mark.parametrize("int3", [False, True], ids=["jump", "int3"])
def test_smsw_r16_writes_only_the_low_word(int3):
    out = run_all(SMSW_SETUP, "smsw bx", "", "smsw", int3)
    assert hex(out["emulate"]["ebx"]) == hex(0xDEAD0031)
    assert out["bt"] == out["emulate"]
    assert out["trap"]["ebx"] >> 16 == 0xDEAD


@pytest.mark.parametrize("int3", [False, True], ids=["jump", "int3"])
def test_o16_sidt_stores_a_24_bit_base(int3):
    """lidt a base with a non-zero top byte; sidt with 0x66 stores its low 24
    bits and a zero top byte, the 32-bit sidt all of it."""
    setup = ("mov word ptr [0x3000], 0x7ff\nmov dword ptr [0x3002], 0xc0123456\n"
             "mov dword ptr [0x3014], 0xffffffff\n"
             ".byte 0x0f, 0x01, 0x1d, 0x00, 0x30, 0x00, 0x00\n"     # lidt [0x3000]
             ".byte 0x0f, 0x01, 0x0d, 0x08, 0x30, 0x00, 0x00")      # sidt [0x3008]
    setup += "\nmov ebx, 0x3010"
    site = ".byte 0x66, 0x0f, 0x01, 0x0b"                           # o16 sidt [ebx]
    collect = "mov ebx, dword ptr [0x300a]\nmov ecx, dword ptr [0x3012]\nmovzx edx, word ptr [0x3010]"
    out = run_all(setup, site, collect, "sidt", int3)
    assert {r: hex(out["emulate"][r]) for r in ("ebx", "ecx", "edx")} == \
        {"ebx": hex(0xC0123456), "ecx": hex(0x00123456), "edx": hex(0x7FF)}
    assert out["bt"] == out["emulate"]
