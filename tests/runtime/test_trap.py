"""The deprivileged runtime (--mode trap): world switch, trap-and-emulate,
reflection, and the ways a run ends."""
import json
import subprocess
import sys

from conftest import EXIT, raw_guest, run


def test_guest_kernel_runs_in_ring_1_but_sees_ring_0_in_frames():
    img = raw_guest("mov esp, 0x90000\nmov esi, cs\nmov ebx, ss\n" + EXIT)
    vm, res = run(img, "trap")
    assert res.exit_status == 0
    assert vm.uc.reg_read(__import__("unicorn").x86_const.UC_X86_REG_CS) & 3 == 1
    assert res.regs["cs"] == 0x08            # guest view in the report
    assert res.regs["esi"] & 0xFFFF == 0x09  # the native read leaks RPL 1 (predicted)


def test_hundred_thousand_consecutive_traps_without_a_double_fault():
    img = raw_guest("mov esp, 0x90000\nmov ecx, 50000\nl: mov eax, cr2\nclts\ndec ecx\njnz l\n" + EXIT)
    _, res = run(img, "trap")
    assert res.exit_status == 0, res.message
    assert res.counters["faults_emulated"] == {"mov": 50000, "clts": 50000}
    assert res.counters["exceptions_delivered"] == {}


def test_cli_and_sti_run_natively_at_cpl1():
    """The guest's IF is the real IF (real IOPL 1 at CPL 1): no exit, and pushfd
    shows the IF cli/sti left (docs/fidelity.md, "IF in the real EFLAGS")."""
    img = raw_guest("mov esp, 0x90000\nmov ecx, 1000\nl: cli\nsti\ndec ecx\njnz l\ncli\npushfd\npop ebx\n"
                    "sti\npushfd\npop esi\n" + EXIT)
    for mode in ("trap", "bt"):
        _, res = run(img, mode)
        assert res.exit_status == 0, res.message
        assert res.counters["faults_emulated"] == {}, mode
        assert res.regs["ebx"] & 0x200 == 0 and res.regs["esi"] & 0x200, mode
        assert res.regs["ebx"] & 0x3000 == (0 if mode == "bt" else 0x1000), mode   # trap: the real IOPL 1


def test_privileged_state_is_virtual():
    img = raw_guest("mov esp, 0x90000\nmov eax, cr0\nor eax, 8\nmov cr0, eax\nmov ebx, cr0\n"
                    "clts\nmov ecx, cr0\nmov eax, 0x1234\nmov dr3, eax\nmov edx, dr3\n"
                    "mov ecx, 0x10\nmov eax, 5\nxor edx, edx\nwrmsr\nxor eax, eax\nrdmsr\n"
                    "mov esi, eax\n" + EXIT)
    _, res = run(img, "trap")
    assert res.exit_status == 0
    assert res.regs["ebx"] == 0x19 and res.regs["esi"] == 5
    assert set(res.counters["faults_emulated"]) >= {"mov", "clts", "wrmsr", "rdmsr"}


def test_rdtsc_counts_virtual_instructions_in_ring_1():
    img = raw_guest("rdtsc\nmov ebx, eax\nnop\nnop\nrdtsc\nsub eax, ebx\nmov esi, eax\n" + EXIT)
    _, a = run(img, "trap")
    _, b = run(img, "emulate")
    assert a.regs["esi"] == b.regs["esi"] == 4


def test_genuine_fault_is_reflected_with_its_error_code():
    # IDT at 0x10000 with one #GP gate; the handler stores the error code in esi.
    import struct
    handler = 0x100100
    gate = struct.pack("<HHBBH", handler & 0xFFFF, 0x08, 0, 0x8E, handler >> 16)
    idt = bytes(13 * 8) + gate
    src = ("mov esp, 0x90000\nlidt [idtr]\nmov ax, 0x7f0\nmov fs, ax\n" + EXIT +
           "idtr: .word 0x7f\n.long 0x10000\n.align 256\n"
           "pop esi\nmov al, 0\nout 0xf4, al\n")
    img = raw_guest(src, [(0x10000, idt)])
    for mode in ("emulate", "trap", "bt"):
        _, res = run(img, mode)
        assert res.exit_status == 0, (mode, res.message)
        assert res.regs["esi"] == 0x7F0, mode


def test_hlt_with_interrupts_disabled_is_a_hang():
    _, res = run(raw_guest("cli\nhlt"), "trap")
    assert (res.exit_status, res.reason) == (125, "hang")


def test_guest_that_runs_forever_hits_the_budget():
    _, res = run(raw_guest("l: jmp l"), "trap", max_instructions=100_000)
    assert (res.exit_status, res.reason, res.retired) == (124, "budget", 100_000)


def test_triple_fault_ends_the_run_with_a_report(tmp_path):
    # No IDT: the #UD cannot be delivered (#GP), nor that (#DF): shutdown.
    src = tmp_path / "t.bin"
    from conftest import assemble
    src.write_bytes(assemble("lidt [0x2000]\nud2", 0x100000))
    report = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "bt.cli.run", str(src), "--load", "0x100000",
                        "--mode", "trap", "--report", str(report)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 125
    assert "Traceback" not in p.stderr
    r = json.loads(report.read_text())
    assert r["reason"] == "triple-fault" and r["exit_status"] == 125


def test_paging_without_tables_ends_as_under_emulate():
    """Paging on with CR3 = 0 (no tables): trap no longer refuses paging
    (runtime/paging.py); the guest meets what emulate's guest meets."""
    img = raw_guest("mov eax, cr0\nor eax, 0x80000000\nmov cr0, eax\n" + EXIT)
    _, want = run(img, "emulate")
    _, got = run(img, "trap")
    assert (got.exit_status, got.reason) == (want.exit_status, want.reason)


def _pae_guest(top_present: bool):
    """PAE paging: PDPTE 0 -> a directory of 2 MiB identity pages, PDPTE 3 (the
    hypervisor area's gigabyte) -> an empty directory, or not present."""
    import struct
    pdpt = struct.pack("<QQQQ", 0x31000 | 1, 0, 0, (0x32000 | 1) if top_present else 0)
    pd0 = b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(8))
    src = ("mov eax, cr4\nor eax, 0x20\nmov cr4, eax\nmov eax, 0x30000\nmov cr3, eax\n"
           "mov eax, cr0\nor eax, 0x80000000\nmov cr0, eax\n"
           "mov eax, ds\nmov ds, eax\nmov dword ptr [0x40000], 0x1234\nmov eax, dword ptr [0x40000]\n" + EXIT)
    return raw_guest(src, [(0x30000, pdpt), (0x31000, pd0)])


def test_pae_paging_guest_runs_in_trap_mode_as_under_emulate():
    want_vm, want = run(_pae_guest(True), "emulate")
    vm, got = run(_pae_guest(True), "trap")
    assert got.exit_status == want.exit_status == 0, got.message
    assert vm.uc.mem_read(0x40000, 4) == want_vm.uc.mem_read(0x40000, 4) == b"\x34\x12\x00\x00"
    stats = vm.mode.hyper_mapping.stats()
    from bt.machine import DEFAULT_HYPER_BASE
    index = (DEFAULT_HYPER_BASE >> 21) & 0x1FF            # the area's first 2 MiB entry (0x1F4)
    assert stats["directory_slots"] == [hex(0x32000 + index * 8), hex(0x32000 + (index + 1) * 8)]


def test_efer_nxe_reaches_the_real_cpu_under_trap():
    """wrmsr EFER.NXE is emulated at ring 1 and must reach the real CPU: with it
    bit 63 of a PAE entry is NX (data reads pass), without it a reserved bit
    (#PF; tests/runtime/test_guest_memory.py)."""
    import struct
    pdpt = struct.pack("<QQQQ", 0x31000 | 1, 0, 0, 0x32000 | 1)
    pd0 = struct.pack("<QQ", 0x83, 0x200000 | 0x83 | (1 << 63))      # 2-4 MiB: NX
    src = ("mov ecx, 0xc0000080\nrdmsr\nor eax, 0x800\nwrmsr\n"
           "mov eax, cr4\nor eax, 0x20\nmov cr4, eax\nmov eax, 0x30000\nmov cr3, eax\n"
           "mov eax, cr0\nor eax, 0x80000000\nmov cr0, eax\n"
           "mov dword ptr [0x200100], 0x5678\nmov eax, dword ptr [0x200100]\n"
           "mov dword ptr [0x40000], eax\n" + EXIT)
    img = raw_guest(src, [(0x30000, pdpt), (0x31000, pd0)])
    want_vm, want = run(img, "emulate")
    vm, got = run(img, "trap")
    assert got.exit_status == want.exit_status == 0, got.message
    assert vm.uc.mem_read(0x40000, 4) == want_vm.uc.mem_read(0x40000, 4) == b"\x78\x56\x00\x00"


def test_pae_paging_without_a_directory_for_the_area_is_refused_clearly():
    _, res = run(_pae_guest(False), "trap")
    assert res.exit_status == 70 and "PDPTE" in res.message
