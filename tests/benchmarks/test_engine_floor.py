"""benchmarks/engine_floor.py: where the decompressor jumps, its one-line refusals,
and its same-work check."""
import pytest

from bt.images.linux_guest import linux_available

from scripts import load_script

ef = load_script("engine_floor")
MIB = 1 << 20


def facts(**kw):
    base = dict(load=16 * MIB, kernel_alignment=16 * MIB, relocatable=True,
                pref_address=16 * MIB, vmlinux_entry=16 * MIB)
    base.update(kw)
    return ef.BootFacts(**base)


def test_debian_layout_jumps_to_the_load_address():
    # Debian's 686 kernel: loaded at pref_address, entry = LOAD_PHYSICAL_ADDR
    assert ef.kernel_entry(facts()) == 16 * MIB


def test_relocatable_output_is_the_load_address_rounded_up_but_never_below_pref():
    assert ef.kernel_entry(facts(load=0x100000, kernel_alignment=2 * MIB)) == 16 * MIB
    assert ef.kernel_entry(facts(load=0x2345000, kernel_alignment=2 * MIB)) == 0x2400000
    assert ef.kernel_entry(facts(load=0x2400000, kernel_alignment=2 * MIB)) == 0x2400000


def test_fixed_kernel_goes_to_pref_and_the_entry_offset_is_kept():
    assert ef.kernel_entry(facts(load=0x100000, relocatable=False)) == 16 * MIB
    assert ef.kernel_entry(facts(load=0x2345000, kernel_alignment=2 * MIB,
                                 vmlinux_entry=16 * MIB + 0x1234)) == 0x2401234


def test_missing_image_or_qemu_is_one_line(monkeypatch, capsys):
    import shutil
    import bt.images.linux_guest as lg
    monkeypatch.setattr(lg, "linux_available", lambda: False)
    line = ef.missing(True)
    assert "bt-images fetch linux" in line and "\n" not in line
    monkeypatch.setattr(lg, "linux_available", lambda: True)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    line = ef.missing(True)
    assert "qemu-system-i386" in line and "\n" not in line
    assert ef.missing(False) is None
    monkeypatch.setattr("sys.argv", ["engine_floor.py", "--configs", "bare,qemu"])
    assert ef.main() == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "qemu-system-i386" in out[0]


def _run(config, eip=16 * MIB, sha="ab", **regs):
    r = {n: 0 for n in ef.REGS}
    r.update(regs, eip=eip)
    return {"config": config, "target": 16 * MIB, "serial_sha": sha, "regs": r}


def test_same_work_check_names_each_difference():
    assert ef.check_same_work([_run("bare"), _run("hooked"), _run("emulate")]) == []
    problems = ef.check_same_work([_run("bare"), _run("hooked", sha="cd"), _run("emulate", eip=0x1000005)])
    assert any("hooked: serial_sha" in p for p in problems)
    assert any("emulate: EIP 0x1000005" in p for p in problems)
    assert any("emulate: registers differ" in p and "eip" in p for p in problems)
    assert ef.check_same_work([_run("bare"), _run("emulate", esp=4)])[0].startswith("emulate: registers")


@pytest.mark.slow
@pytest.mark.skipif(not linux_available(), reason="the Debian guest is not cached (bt-images fetch linux)")
def test_debian_image_kernel_entry_is_startup_32():
    from pathlib import Path
    from bt.images.linux_guest import load_cached_linux
    img = load_cached_linux(64)
    data = Path(img.path).read_bytes()
    f = ef.boot_facts(img.path, data, img.entry)
    assert f.relocatable and f.load == img.entry
    assert ef.kernel_entry(f) == 16 * MIB


def test_libc_abs_as_a_native_block_hook_changes_nothing():
    """The `hooked` configuration's callback: libc's abs() registered with
    uc_hook_add as a UC_HOOK_BLOCK callback on all code.  Fact: the guest's
    result is the bare engine's (and a Python block hook on the same blocks,
    registered after it, is still called at every block)."""
    import ctypes
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks
    from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_MODE_32, Uc
    from unicorn import x86_const as X
    from runtime.fastuc import hook_add
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(
        "mov ecx, 1000; xor eax, eax; top: add eax, ecx; mov [0x2000], eax; dec ecx; jnz top; nop", 0x1000)[0])

    def run(hooked: bool):
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0, 0x10000)
        uc.mem_write(0x1000, code)
        blocks = []
        if hooked:
            hook_add(uc, UC_HOOK_BLOCK, ctypes.cast(ctypes.CDLL(None).abs, ctypes.c_void_p).value, None, 1, 0)
            uc.hook_add(UC_HOOK_BLOCK, lambda uc, a, s, u: blocks.append(a))
        uc.emu_start(0x1000, 0x1000 + len(code) - 1)
        return uc.reg_read(X.UC_X86_REG_EAX), bytes(uc.mem_read(0x2000, 4)), len(blocks)

    bare, hooked = run(False), run(True)
    assert bare[:2] == hooked[:2] == (500500, (500500).to_bytes(4, "little"))
    assert hooked[2] >= 1000            # the loop's body is a block of its own, run 1000 times
