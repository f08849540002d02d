"""QEMU's pc-testdev and port 0x92 in a running machine, in every mode (small
guests of our own; runtime/devices/pctestdev.py, runtime/devices/port92.py):
the data register at 0xE0/0xE8, the IRQ-line ports driving the 8259, the
64 KiB of RAM at 0xFF000000 (also as an operand the VMM reads for an
emulated instruction), the hypervisor area's default base clear of it, and a
reset through port 0x92 ending the run as the keyboard controller's does."""
import pytest

from bt.demos import program_image
from bt.errors import BadInput
from bt.images.image import GuestImage
from bt.machine import DEFAULT_HYPER_BASE, PC_TESTDEV_RAM, MachineConfig
from bt.outcome import Outcome
from runtime.vm import VM

MODES = ("emulate", "trap", "bt")
RAM, RAM_SIZE = PC_TESTDEV_RAM


def _image(body: str, extra: str = "") -> GuestImage:
    main = f"""
main:
    call lib_setup_gdt
    call lib_setup_idt
    xor esi, esi
    xor edi, edi
    xor ebx, ebx
    xor ebp, ebp
{body}
    cli
    xor eax, eax
    ret
{extra}
"""
    return program_image(main, "pctestdev")


def _vm(body: str, mode: str, extra: str = "", testdev: bool = True) -> VM:
    return VM(_image(body, extra), MachineConfig(mode=mode, mem_mib=8, pc_testdev=testdev), stdout=None)


def _run(body: str, mode: str, extra: str = ""):
    vm = _vm(body, mode, extra)
    r = vm.run()
    assert r.exit_status == 0, (r.reason, r.message)
    return vm, r


DATA_REGISTER = """
    mov dx, 0xe0
    mov eax, 0x11223344
    out dx, eax
    mov dx, 0xe1
    in al, dx
    movzx esi, al              # 0x33: byte 1 of the register
    mov dx, 0xea
    mov ax, 0xaabb
    out dx, ax                 # bytes 2-3 through the byte-wise ports
    mov dx, 0xe8
    in eax, dx
    mov edi, eax               # 0xaabb3344
    mov dx, 0xe4
    in eax, dx
    mov ebx, eax               # the flush port is write-only: all ones
    mov dx, 0xe4
    mov eax, 0x1000
    out dx, eax                # one page "flushed": nothing to see
"""


@pytest.mark.parametrize("mode", MODES)
def test_the_data_register_reads_back_at_any_width_and_offset(mode):
    vm, r = _run(DATA_REGISTER, mode)
    assert r.regs["esi"] == 0x33 and r.regs["edi"] == 0xAABB3344 and r.regs["ebx"] == 0xFFFFFFFF
    assert vm.devices["pc-testdev"].stats() == {"flushes": 1, "ignored": 1}


TEST_RAM = f"""
    mov dword ptr [{RAM:#x}], 0xdeadbeef
    mov dword ptr [{RAM + RAM_SIZE - 4:#x}], 0x01020304
    mov esi, dword ptr [{RAM:#x}]
    mov edi, dword ptr [{RAM + RAM_SIZE - 4:#x}]
    push esi
    push edi
    mov esi, 0x100000          # 64 bytes of code into the test RAM and back, with rep movsd
    mov edi, {RAM + 0x100:#x}
    mov ecx, 16
    .byte 0xf3, 0xa5           # rep movsd (Keystone refuses the mnemonic)
    mov esi, {RAM + 0x100:#x}
    mov edi, 0x200000
    mov ecx, 16
    .byte 0xf3, 0xa5
    mov esi, 0x100000
    mov edi, 0x200000
    mov ecx, 16
    repe cmpsd
    mov ebp, ecx               # 0: the copies agree
    pop edi
    pop esi
    # lgdt reads its operand from the test RAM: the VMM's own read in trap and
    # bt (lgdt traps at ring 1); a segment load then checks the table.
    # (encoded by hand: Keystone adds an operand-size prefix to lgdt)
    mov word ptr [{RAM + 0x200:#x}], GDT_LIMIT
    mov dword ptr [{RAM + 0x202:#x}], GDT_ADDR
    .byte 0x0f, 0x01, 0x15     # lgdt [RAM + 0x200]
    .long {RAM + 0x200:#x}
    mov eax, KDATA
    mov ds, eax
    mov ebx, dword ptr [{RAM + 0x202:#x}]
"""


@pytest.mark.parametrize("mode", MODES)
def test_the_test_ram_is_memory(mode):
    vm, r = _run(TEST_RAM, mode)
    assert r.regs["esi"] == 0xDEADBEEF and r.regs["edi"] == 0x01020304
    assert r.regs["ebp"] == 0 and r.regs["ebx"] == 0x10000


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("address", [RAM + RAM_SIZE, RAM - 4])
def test_past_the_test_ram_is_nothing(mode, address):
    r = _vm(f"    mov eax, dword ptr [{address:#x}]\n", mode).run()
    assert r.reason is Outcome.UNMAPPED_ACCESS and f"{address:#x}" in r.message


@pytest.mark.parametrize("mode", MODES)
def test_without_the_device_there_is_nothing_at_0xff000000(mode):
    r = _vm(f"    mov eax, dword ptr [{RAM:#x}]\n", mode, testdev=False).run()
    assert r.reason is Outcome.UNMAPPED_ACCESS and f"{RAM:#x}" in r.message
    r = _vm("    mov dx, 0xe0\n    in eax, dx\n    mov esi, eax\n", mode, testdev=False).run()
    assert r.regs["esi"] == 0xFFFFFFFF


def test_the_hypervisor_area_sits_elsewhere_by_default():
    assert not DEFAULT_HYPER_BASE <= RAM < DEFAULT_HYPER_BASE + 0x400000
    vm, _ = _run("    nop\n", "trap")
    assert vm.mode.hyper.base == DEFAULT_HYPER_BASE
    with pytest.raises(BadInput, match="overlaps the pc-testdev's RAM"):
        VM(_image("    nop\n"), MachineConfig(mode="trap", mem_mib=8, pc_testdev=True,
                                               hyper_base=0xFF000000), stdout=None)
    # Without the device the old base is still allowed.
    VM(_image("    nop\n"), MachineConfig(mode="trap", mem_mib=8, hyper_base=0xFF000000), stdout=None)


# IRQ 5 through the 8259 (vector 0x25): the handler counts in ESI and sends EOI.
IRQ_SETUP = """
    call lib_init_pic
    mov al, 0xdf               # only IRQ 5 unmasked
    out 0x21, al
    mov ecx, 0x25
    mov eax, h_irq5
    mov edx, 0x8e
    call set_gate
    sti
"""
IRQ_HANDLER = """
h_irq5:
    inc esi
    push eax
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd
"""
IRQ_LINES = IRQ_SETUP + """
    mov dx, 0x2005
    mov al, 1
    out dx, al                 # rising: taken right after the out
    mov edi, esi               # 1
    out dx, al                 # still high: no new edge
    mov ebx, esi               # 1
    xor al, al
    out dx, al
    mov al, 1
    out dx, al                 # low then high again: a second interrupt
    mov ebp, esi               # 2
    cli
    mov al, 0
    out dx, al
    mov al, 1
    out dx, al                 # raised while IF=0 ...
    mov al, 0
    out dx, al                 # ... and lowered before IF=1: withdrawn
    mov dx, 0x2010
    mov al, 1
    out dx, al                 # line 16: an I/O APIC's only; none here
    mov dx, 0x2005
    out dx, ax                 # a word write is not a line write
    sti
    nop
"""


@pytest.mark.parametrize("mode", MODES)
def test_irq_line_ports_drive_the_8259(mode):
    vm, r = _run(IRQ_LINES, mode, IRQ_HANDLER)
    assert (r.regs["edi"], r.regs["ebx"], r.regs["ebp"], r.regs["esi"]) == (1, 1, 2, 2)
    assert r.counters["interrupts_injected"] == {"0x25": 2}
    assert vm.devices["pc-testdev"].stats() == {"irq_writes": 8, "ignored": 1}


PORT92_RESET = """
    in al, 0x92
    movzx esi, al              # 0x02: A20 on, no reset
    and al, 0xfe
    out 0x92, al               # bit 0 stays clear: nothing
    mov edi, 1
    or al, 1
    out 0x92, al               # 0 -> 1: reset
    mov edi, 2
"""


@pytest.mark.parametrize("mode", MODES)
def test_port92_bit0_rising_resets_the_machine(mode):
    vm = _vm(PORT92_RESET, mode, testdev=False)
    r = vm.run()
    assert r.reason is Outcome.RESET and r.exit_status == 0
    assert r.regs["esi"] == 0x02 and r.regs["edi"] == 1
    assert vm.devices["port92"].stats() == {"reset_requests": 1}


@pytest.mark.parametrize("body,extra", [(DATA_REGISTER, ""), (TEST_RAM, ""), (IRQ_LINES, IRQ_HANDLER),
                                        (PORT92_RESET, "")])
def test_every_mode_agrees(body, extra):
    rs = {m: _vm(body, m, extra).run() for m in MODES}
    assert len({(r.reason, r.retired) for r in rs.values()}) == 1, {m: (r.reason, r.retired) for m, r in rs.items()}
    regs = {m: tuple(sorted((k, v) for k, v in r.regs.items() if k != "esp")) for m, r in rs.items()}
    assert len(set(regs.values())) == 1, regs


RAM_CODE = f"""
    mov dword ptr [{RAM:#x}], 0x001234be       # mov esi, 0x1234 ...
    mov dword ptr [{RAM + 4:#x}], 0x0000c300   # ... ; ret
    mov eax, {RAM:#x}
    call eax
    mov dword ptr [{RAM + 0x100:#x}], 0xc3589c90   # nop; pushfd; pop eax; ret
    mov eax, {RAM + 0x100:#x}
    call eax
    mov edi, eax
"""


@pytest.mark.parametrize("mode", MODES)
def test_code_in_the_test_ram_runs_and_is_counted(mode):
    _, r = _run(RAM_CODE, mode)
    assert r.regs["esi"] == 0x1234
    assert r.retired == _run(RAM_CODE, "emulate")[1].retired


def test_code_in_the_test_ram_runs_unpatched_under_bt():
    """A known limit (docs/devices.md, "pc-testdev"): CSAM scans RAM pages only,
    so bt runs sensitive code in the device's RAM as trap does -- pushfd there
    shows the real IOPL 1 where emulate shows the guest's 0."""
    flags = {m: _run(RAM_CODE, m)[1].regs["edi"] for m in MODES}
    assert flags["emulate"] & 0x3000 == 0
    assert flags["trap"] == flags["bt"] == flags["emulate"] | 0x1000


def test_the_api_passes_the_option_on():
    from bt import api
    r = api.run(_image(f"    mov esi, dword ptr [{RAM:#x}]\n"), "bt", mem_mib=8, pc_testdev=True)
    assert r.exit_status == 0 and r.vm.config.pc_testdev
    assert api.run(_image(f"    mov esi, dword ptr [{RAM:#x}]\n"), "bt", mem_mib=8).reason is Outcome.UNMAPPED_ACCESS
    assert api.fidelity(_image(DATA_REGISTER), "bt", mem_mib=8, pc_testdev=True).verdict == "identical"


@pytest.mark.parametrize("flag,status", [([], 125), (["--pc-testdev"], 0x5A)])
def test_bt_run_pc_testdev_flag(tmp_path, flag, status):
    """`bt-run --pc-testdev` adds the device (its RAM, read back, is the exit
    status); without it the same load is an unmapped access."""
    import subprocess
    import sys
    from conftest import assemble
    src = tmp_path / "t.bin"
    src.write_bytes(assemble(f"mov byte ptr [{RAM + 0x10:#x}], 0x5a\nmov al, byte ptr [{RAM + 0x10:#x}]\n"
                             "out 0xf4, al", 0x100000))
    p = subprocess.run([sys.executable, "-m", "bt.cli.run", str(src), "--load", "0x100000", "--mode", "bt",
                        "-q", *flag], capture_output=True, text=True, timeout=120)
    assert p.returncode == status, p.stderr
    assert "Traceback" not in p.stderr
