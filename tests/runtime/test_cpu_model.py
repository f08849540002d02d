"""#GP where the CPU model gives it (issue 21; kvm-unit-tests msr.flat, la57.flat):
rdmsr/wrmsr of an MSR the 32-bit P6 model lacks (FS_BASE, GS_BASE,
KERNEL_GS_BASE, unknown numbers), `mov cr4` setting a bit it lacks (LA57,
UMIP, reserved), rdpmc of a counter other than 0 and 1 (runtime/cpuid.py).
Under emulate runtime/cpucheck.py makes Unicorn's CPL-0 execution fault; under
trap and bt runtime/emulation.py's routines do.  Each mode must give the SDM's
answer: the facts below pin what Unicorn does on its own."""
import struct

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc
from unicorn import x86_const as X

from conftest import LOAD, assemble, raw_guest, run
from runtime import cpuid as model

MODES = ("emulate", "trap", "bt")
OPS, IDT, GDT, HANDLER, OUT, SKIP = 0x200000, 0x201000, 0x203000, 0x202000, 0x40000, 0x3F000
LGDT, LIDT = ".byte 0x0f,0x01,0x15\n.int {}\n", ".byte 0x0f,0x01,0x1d\n.int {}\n"
GDT_BYTES = bytes(8) + struct.pack("<IIII", 0x0000FFFF, 0x00CF9A00, 0x0000FFFF, 0x00CF9200)
# #GP handler: OUT+4+8k = (error code, EIP) of fault k, OUT = how many; skip the instruction.
GP_HANDLER = (f"pop eax\nmov ecx, [{OUT:#x}]\nmov [{OUT + 4:#x} + ecx*8], eax\nmov eax, [esp]\n"
              f"mov [{OUT + 8:#x} + ecx*8], eax\ninc dword ptr [{OUT:#x}]\nmov eax, [{SKIP:#x}]\n"
              "add [esp], eax\niretd\n")
FS_BASE, GS_BASE, KERNEL_GS_BASE = 0xC0000100, 0xC0000101, 0xC0000102


def _idt() -> bytes:
    gates = [bytes(8)] * 32
    gates[13] = struct.pack("<II", (0x08 << 16) | (HANDLER & 0xFFFF), (HANDLER & 0xFFFF0000) | 0x8E00)
    return b"".join(gates)


SETUP = ("mov esp, 0x90000\n" + LGDT.format(OPS) + LIDT.format(OPS + 8)
         + "mov ax, 0x10\nmov ds, ax\nmov es, ax\nmov fs, ax\nmov ss, ax\n")

# (name, statements, length of the last instruction, faults?)
SITES = [
    ("wrmsr-fs-base", f"mov ecx, {FS_BASE:#x}\nmov eax, 0x56789000\nxor edx, edx\nwrmsr", 2, True),
    ("rdmsr-fs-base", f"mov ecx, {FS_BASE:#x}\nrdmsr", 2, True),
    ("wrmsr-gs-base", f"mov ecx, {GS_BASE:#x}\nxor eax, eax\nxor edx, edx\nwrmsr", 2, True),
    ("rdmsr-kernel-gs-base", f"mov ecx, {KERNEL_GS_BASE:#x}\nrdmsr", 2, True),
    ("rdmsr-unknown", "mov ecx, 0x12345\nrdmsr", 2, True),
    ("wrmsr-unknown", "mov ecx, 0x12345\nmov eax, 7\nxor edx, edx\nwrmsr", 2, True),
    ("rdmsr-pat", "mov ecx, 0x277\nrdmsr", 2, False),
    ("wrmsr-apic-base-reserved-bit", "mov ecx, 0x1b\nmov eax, 0xfee00901\nxor edx, edx\nwrmsr", 2, True),
    ("wrmsr-apic-base-extd", "mov ecx, 0x1b\nmov eax, 0xfee00d00\nxor edx, edx\nwrmsr", 2, True),
    ("wrmsr-apic-base-high", "mov ecx, 0x1b\nmov eax, 0xfee00900\nmov edx, 1\nwrmsr", 2, True),
    ("wrmsr-mc1-ctl-not-all-ones", "mov ecx, 0x404\nmov eax, 0xaaaaaaaa\nmov edx, eax\nwrmsr", 2, True),
    ("wrmsr-mc1-ctl-all-ones", "mov ecx, 0x404\nmov eax, -1\nmov edx, eax\nwrmsr", 2, False),
    ("wrmsr-mc0-status-nonzero", "mov ecx, 0x401\nmov eax, 1\nxor edx, edx\nwrmsr", 2, True),
    ("wrmsr-misc-enable", "mov ecx, 0x1a0\nmov eax, 1\nxor edx, edx\nwrmsr", 2, False),
    ("mov-cr4-la57", "mov eax, cr4\nor eax, 0x1000\nmov cr4, eax", 3, True),
    ("mov-cr4-umip", "mov eax, cr4\nor eax, 0x800\nmov cr4, eax", 3, True),
    ("mov-cr4-reserved-high", "mov eax, cr4\nor eax, 0x80000000\nmov cr4, eax", 3, True),
    ("mov-cr4-pse", "mov eax, cr4\nor eax, 0x10\nmov cr4, eax", 3, False),
    ("rdpmc-counter-2", "mov ecx, 2\nrdpmc", 2, True),
    ("rdpmc-counter-0", "mov ecx, 0\nmov eax, 5\nrdpmc", 2, False),
]


def _guest(names):
    body = [SETUP]
    for name, stmts, length, _ in SITES:
        if name in names:
            body.append(f"mov dword ptr [{SKIP:#x}], {length}\n{stmts}\n")
    # the state after: FS works with its 32-bit base (0), CR4, EAX of the last site
    body.append(f"mov ebx, cr4\nmov esi, fs:[{OUT + 0x100:#x}]\nmov al, 0\nout 0xf4, al\n")
    src = "".join(body)
    code = assemble(src)
    ops = struct.pack("<HI", len(GDT_BYTES) - 1, GDT) + bytes(2) + struct.pack("<HI", 32 * 8 - 1, IDT)
    return raw_guest(src, [(OPS, ops), (IDT, _idt()), (GDT, GDT_BYTES), (HANDLER, assemble(GP_HANDLER, HANDLER)),
                           (OUT + 0x100, b"\x5a\x5a\x5a\x5a")]), code


def _site_addresses(names):
    """The address of each named site's last instruction."""
    out, src = {}, SETUP
    for name, stmts, length, _ in SITES:
        if name in names:
            src += f"mov dword ptr [{SKIP:#x}], {length}\n{stmts}\n"
            out[name] = LOAD + len(assemble(src)) - length
    return out


def _faults(vm):
    n = struct.unpack("<I", vm.uc.mem_read(OUT, 4))[0]
    return [struct.unpack("<II", vm.uc.mem_read(OUT + 4 + 8 * k, 8)) for k in range(n)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [s[0] for s in SITES])
def test_each_site_faults_as_the_model_says(name, mode):
    image, _ = _guest({name})
    vm, res = run(image, mode, max_instructions=10_000)
    assert (res.exit_status, str(res.reason)) == (0, "debug-exit"), res.message
    faults = next(f for n, _, _, f in SITES if n == name)
    at = _site_addresses({name})[name]
    assert _faults(vm) == ([(0, at)] if faults else [])
    assert res.regs["esi"] == 0x5A5A5A5A, "FS keeps its 32-bit base"


def test_all_sites_in_one_run_agree_across_modes():
    names = {s[0] for s in SITES}
    results = {}
    for mode in MODES:
        image, _ = _guest(names)
        vm, res = run(image, mode, max_instructions=10_000)
        assert res.exit_status == 0, (mode, res.message)
        results[mode] = (_faults(vm), res.regs, res.retired)
    assert results["trap"] == results["emulate"] == results["bt"]
    want = _site_addresses(names)
    assert [eip for _, eip in results["emulate"][0]] == [want[n] for n, _, _, f in SITES if f]
    assert results["emulate"][1]["ebx"] & ~model.CR4_IMPLEMENTED == 0


# -- facts: what Unicorn 2.1.4 does on its own at CPL 0 ---------------------------------------
def _bare(code: str):
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x200000)
    raw = assemble(code, 0x1000)
    uc.mem_write(0x1000, raw)
    seen = []
    uc.hook_add(UC_HOOK_INTR, lambda u, intno, d: (seen.append(intno), u.emu_stop()))
    uc.emu_start(0x1000, 0x1000 + len(raw))
    return uc, seen


def test_fact_unicorn_takes_fs_base_and_unknown_msrs_and_any_cr4():
    uc, seen = _bare(f"mov ecx, {FS_BASE:#x}\nmov eax, 0x12340000\nxor edx, edx\nwrmsr\n"
                     "mov ecx, 0x12345\nmov eax, 9\nrdmsr\nmov ebx, eax\n"
                     "mov eax, cr4\nor eax, 0x1800\nmov cr4, eax\nmov esi, cr4\n")
    assert seen == []
    assert uc.msr_read(FS_BASE) == 0x12340000
    assert uc.reg_read(X.UC_X86_REG_EBX) == 0
    assert uc.reg_read(X.UC_X86_REG_ESI) & 0x1800 == 0x1800


def test_fact_unicorn_treats_rdpmc_as_an_invalid_opcode():
    """Whatever ECX and CR4.PCE say: runtime/vm.py `_rdpmc` answers it."""
    from unicorn import UcError, UC_ERR_INSN_INVALID
    with pytest.raises(UcError) as e:
        _bare("xor ecx, ecx\nrdpmc\n")
    assert e.value.errno == UC_ERR_INSN_INVALID
