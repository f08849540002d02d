"""Binary translation (--mode bt): adversarial patch sites, self-modifying code,
isolation of the stub cache.  Each guest must give exactly what pure emulation
gives; the counters show which mechanism handled it."""
from conftest import EXIT, LOAD, assemble, raw_guest, run
from bt.images.image import GuestImage, Segment

REGS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "esp", "eflags")


def same_as_emulate(img, **cfg):
    _, emu = run(img, "emulate", **cfg)
    vm, bt = run(img, "bt", **cfg)
    assert bt.exit_status == emu.exit_status == 0, bt.message
    assert bt.serial == emu.serial
    assert {r: bt.regs[r] for r in REGS} == {r: emu.regs[r] for r in REGS}
    return vm, bt


def test_branch_target_inside_the_bytes_after_a_one_byte_site():
    img = raw_guest("mov esp, 0x90000\nmov ecx, 3\nxor esi, esi\nsti\ncli\npushfd\npop edx\n"
                    "inner: pushfd\npop eax\nadd esi, eax\ndec ecx\njnz inner\n" + EXIT)
    vm, res = same_as_emulate(img)
    assert res.extra["patches"]["refused"].get("branch-target-inside", 0) >= 1


def test_pushfd_whose_successor_is_a_jump_target():
    img = raw_guest("mov esp, 0x90000\nmov ecx, 3\nxor esi, esi\npushfd\n"
                    "back: pop eax\nor esi, eax\ndec ecx\njz done\npush 0x246\njmp back\n"
                    "done:\n" + EXIT)
    vm, res = same_as_emulate(img)
    p = res.extra["patches"]
    assert p["refused"].get("branch-target-inside") == 1 and p["int3_fallbacks"] >= 1
    assert res.extra["csam"]["int3_exits"] == 1


def test_patch_site_that_straddles_a_page():
    site = LOAD + 0xFFE                       # pushfd, then the page boundary
    head = assemble(f"mov esp, 0x90000\njmp {site:#x}", LOAD)
    tail = assemble("pushfd\npop esi\nmov al, 0\nout 0xf4, al", site)
    img = GuestImage("straddle", "raw", LOAD, [Segment(LOAD, head), Segment(site, tail)])
    vm, res = same_as_emulate(img)
    assert res.extra["patches"]["refused"].get("page-boundary") == 1


def test_guest_overwrites_a_patched_instruction_and_restores_it():
    src = ("mov esp, 0x90000\nmov ebx, 0x1234\n"
           "call f\nmov esi, eax\n"
           "mov byte ptr [f], 0x53\ncall f\nmov edi, eax\n"     # pushfd -> push ebx
           "mov byte ptr [f], 0x9c\ncall f\nmov edx, eax\n" + EXIT +
           "f: pushfd\npop eax\nnop\nnop\nnop\nret\n")
    vm, res = same_as_emulate(raw_guest(src))
    assert res.regs["edi"] == 0x1234
    assert res.extra["patches"]["removed"] >= 1
    assert res.extra["csam"]["smc_invalidations"] >= 1
    # Only f's block goes (runtime/smc.py); the writer's blocks on the same
    # page stay scanned, so the page never stops being a code page.
    assert res.extra["csam"]["smc_blocks_dropped"] >= 1
    assert res.extra["csam"]["pages_rescanned"] == 0


def test_code_reached_only_through_a_computed_pointer_is_scanned_before_it_runs():
    src = ("mov esp, 0x90000\nmov eax, target\nxor eax, 0x5a5a\nxor eax, 0x5a5a\ncall eax\n"
           "mov esi, eax\n" + EXIT + ".align 64\ntarget: pushfd\npop eax\nret\n")
    vm, res = same_as_emulate(raw_guest(src))
    assert res.extra["csam"]["guard_exits"] == 1
    assert res.extra["patches"]["installed"].get("pushfd") == 1


def test_guest_write_into_the_stub_cache_ends_as_under_emulate():
    # The store is a guest instruction copied into pushfd's stub (the jump patch
    # covers it): the guard still takes it for the guest's (runtime/isolation.py).
    from bt.hyper_layout import STUBS
    from bt.machine import DEFAULT_HYPER_BASE
    target = DEFAULT_HYPER_BASE + STUBS
    img = raw_guest("mov esp, 0x90000\npushfd\npop eax\n"
                    f"mov dword ptr [{target:#x}], 0x90909090\n" + EXIT)
    vm, res = run(img, "bt")
    assert (res.exit_status, res.reason) == (125, "unmapped-access")
    assert res.message == f"guest touched unmapped physical memory at {target:#x}"
    assert vm.mode.patcher.patches          # the stub it attacked is intact
    stub = next(iter(vm.mode.patcher.patches.values())).stub
    assert bytes(vm.uc.mem_read(stub, 1)) != b"\x90"


def test_reports_show_guest_addresses_not_stub_addresses():
    img = raw_guest("mov esp, 0x90000\nmov ecx, 1000\nl: pushfd\npop eax\ncli\nsti\n"
                    "dec ecx\njnz l\n" + EXIT)
    vm, res = same_as_emulate(img)
    hyper = vm.mode.hyper
    for site in res.counters["exit_sites"]:
        assert not hyper.contains(int(site, 16))
    assert not hyper.contains(res.regs["eip"])


def test_hypervisor_area_moves_mid_run_and_the_guest_does_not_notice():
    from bt.demos import expected_output, load_demo
    from bt.machine import MachineConfig
    from runtime.vm import VM
    vm = VM(load_demo("hotflags", 64 << 20), MachineConfig(mode="bt", max_instructions=1_000_000),
            stdout=None)
    first = vm.run()
    assert first.reason == "budget"
    old_stubs = {s: p.stub for s, p in vm.mode.patcher.patches.items()}
    delta = vm.mode.hyper.base - 0xFE000000
    assert delta > 0
    vm.mode.relocate_hyper(0xFE000000)
    vm.stop, vm.config.max_instructions = None, None
    rest = vm.run()
    assert rest.exit_status == 0
    assert vm.serial == expected_output("hotflags")
    for s, p in vm.mode.patcher.patches.items():
        if s in old_stubs:
            assert p.stub == old_stubs[s] - delta
    assert rest.counters["exits"] - rest.counters["io_exits"] < 50


def test_interrupt_handler_on_an_already_scanned_page_is_scanned_before_it_runs():
    import struct
    handler = LOAD + 0x80
    gate = struct.pack("<HHBBH", handler & 0xFFFF, 0x08, 0, 0x8E, handler >> 16)
    src = ("mov esp, 0x90000\nlidt [idtr]\nint 0x30\nmov esi, eax\n" + EXIT +
           "idtr: .word 0x1ff\n.long 0x10000\n"
           ".align 128\npushfd\npop eax\niretd\n")
    img = raw_guest(src, [(0x10000, bytes(0x30 * 8) + gate)])
    vm, res = same_as_emulate(img)
    assert res.regs["esi"] & 0x200 == 0          # the handler saw the virtual IF
    assert vm.mode.cfg.block_of(handler) is not None      # scanned before it ran


def test_a_relocated_jcc_back_into_the_guest_keeps_virtual_time_exact():
    # The jump patch at pushfd covers `pop eax; dec ecx; jnz loop` (the stub
    # branches back to the guest).  Unicorn does not wrap a jcc's target to 32
    # bits (tests/runtime/test_unicorn_facts.py), so a copied jnz would land at
    # 0x1_xxxxxxxx and the block after it counted as one instruction.
    img = raw_guest("mov esp, 0x90000\nmov ecx, 50\nloop: mov ebx, ecx\nadd esi, ebx\n"
                    "pushfd\npop eax\ndec ecx\njnz loop\n" + EXIT)
    _, emu = run(img, "emulate")
    vm, bt = same_as_emulate(img)
    assert bt.extra["patches"]["installed"].get("pushfd") == 1
    assert bt.retired == emu.retired


def iret_to_self_guest(count: int, flags: str):
    """Linux's sync_core: `pushfl; pushl %cs; pushl $1f; iret; 1:` in a loop
    (`push cs` as a byte: Keystone adds a 0x66 prefix), `flags` run before it."""
    loop = LOAD + 0x40
    return raw_guest(f"mov esp, 0x90000\nmov ecx, {count}\nxor esi, esi\njmp loop\n.align 64\n"
                     f"loop: {flags}\npushfd\n.byte 0x0e\npush {loop + len(assemble(flags, loop)) + 8:#x}\n"
                     "iretd\npushfd\npop eax\nadd esi, eax\nadd esi, esp\ndec ecx\njnz loop\n" + EXIT)


def test_iret_to_self_runs_in_the_stub_without_exits():
    # The iretd closes the pushfd's jump patch (patcher/policy.py _closing_iret):
    # alone it was an int3 patch, one exit per run (docs/benchmarks.md, "Linux under bt").
    for flags in ("nop", "sti", "cli"):
        _, emu = run(iret_to_self_guest(200, flags), "emulate")
        vm, bt = same_as_emulate(iret_to_self_guest(200, flags))
        assert bt.retired == emu.retired
        assert bt.extra["csam"]["int3_exits"] == 0
        assert "iretd" not in bt.counters["faults_emulated"]
        assert bt.extra["patches"]["installed"].get("pushfd", 0) >= 1
