"""bt's self-modifying-code detection uses ONE native write hook whose range grows
to span every code page (runtime/csam.py `_watch_writes`), because Unicorn checks
every store against every write hook's range (docs/benchmarks.md, "Stores as code
grows").  Unicorn 2.1.4 cannot change a hook's range, so the hook is deleted and
re-added: the facts that rests on come first."""
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_HOOK_MEM_WRITE, UC_MODE_32, Uc

from conftest import EXIT, LOAD, assemble, run
from bt.images.image import GuestImage, Segment

REGS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "esp")


def _engine(asm: str):
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    code = assemble(asm, 0x1000)
    uc.mem_write(0x1000, code)
    return uc, 0x1000 + len(code)


def test_fact_a_deleted_write_hook_stops_firing_in_blocks_already_translated():
    """Between runs: the first run translates the block with hook A on 0x5000;
    after A is deleted and B added on 0x9000, the same cached block reports its
    stores to B only."""
    uc, end = _engine("mov dword ptr [0x5000], eax\nmov dword ptr [0x9000], eax\nnop")
    seen = []
    uc.hook_add(UC_HOOK_MEM_WRITE, lambda *a: None, begin=1 << 32, end=(1 << 32) + 0xFFF)  # as bt's keeper
    a = uc.hook_add(UC_HOOK_MEM_WRITE, lambda u, t, addr, *r: seen.append(("A", addr)),
                    begin=0x5000, end=0x5FFF)
    uc.emu_start(0x1000, end)
    assert seen == [("A", 0x5000)]
    seen.clear()
    uc.hook_del(a)
    uc.hook_add(UC_HOOK_MEM_WRITE, lambda u, t, addr, *r: seen.append(("B", addr)),
                begin=0x5000, end=0x9FFF)
    uc.emu_start(0x1000, end)
    assert seen == [("B", 0x5000), ("B", 0x9000)]


def test_fact_a_write_hook_replaced_inside_a_run_fires_once_per_store():
    """Mid-run (a scan from an exit handler): after the swap only the new hook
    fires, so overlapping old and new ranges never report a store twice."""
    uc, end = _engine("mov dword ptr [0x5000], eax\nint3\nmov dword ptr [0x5000], eax\n"
                      "mov dword ptr [0x9000], eax\nnop")
    seen = []
    h = [uc.hook_add(UC_HOOK_MEM_WRITE, lambda u, t, addr, *r: seen.append(("A", addr)),
                     begin=0x5000, end=0x5FFF)]

    def swap(u, intno, _):
        u.hook_del(h[0])
        h[0] = u.hook_add(UC_HOOK_MEM_WRITE, lambda u, t, addr, *r: seen.append(("B", addr)),
                          begin=0x5000, end=0x9FFF)
    uc.hook_add(UC_HOOK_INTR, swap)
    uc.emu_start(0x1000, end)
    assert seen == [("A", 0x5000), ("B", 0x5000), ("B", 0x9000)]


def _far_apart(mem_mib: int = 8):
    """Code on the first page of RAM (after the boot GDT at 0x500), at LOAD and
    on RAM's last page; each far function is called, rewritten (its `mov eax,
    imm32` gets a new immediate) and called again."""
    lo, hi = 0xC00, (mem_mib << 20) - 0x1000
    fn = assemble("mov eax, 0x11111111\npushfd\npop edx\nret", lo)     # the same bytes anywhere
    src = ("mov esp, 0x90000\n"
           f"mov ebx, {lo:#x}\ncall ebx\nmov esi, eax\nmov dword ptr [{lo + 1:#x}], 0x22222222\n"
           "call ebx\nadd esi, eax\n"
           f"mov ebx, {hi:#x}\ncall ebx\nadd esi, eax\nmov dword ptr [{hi + 1:#x}], 0x33333333\n"
           "call ebx\nadd esi, eax\nmov edi, esi\nxor eax, eax\n" + EXIT + "hlt\n")
    return GuestImage("far-apart", "raw", LOAD,
                      [Segment(LOAD, assemble(src)), Segment(lo, fn), Segment(hi, fn)]), lo, hi


def test_code_writes_on_the_first_and_last_page_of_ram_are_detected():
    img, lo, hi = _far_apart()
    _, emu = run(img, "emulate", mem_mib=8)
    vm, bt = run(img, "bt", mem_mib=8)
    assert emu.exit_status == bt.exit_status == 0, bt.message
    assert {r: bt.regs[r] for r in REGS} == {r: emu.regs[r] for r in REGS}
    assert bt.regs["edi"] == (0x11111111 * 2 + 0x22222222 + 0x33333333) & 0xFFFFFFFF
    csam = bt.extra["csam"]
    assert csam["smc_invalidations"] >= 2 and csam["code_writes"] >= 2
    # three ranges, cut at the gaps without code (runtime/hookspans.py): the
    # first page, LOAD's, the last page alone
    assert vm.mode.csam._write_spans[0] == (0, 0) and vm.mode.csam._write_spans[-1] == (hi, hi)
    assert vm.clock.code_write_hooks() == len(vm.mode.csam._write_spans) == 3
    assert 1 <= csam["write_hook_spans"] <= 3        # one per growth: low page, LOAD, the last page


def test_native_write_hooks_stay_one_as_code_pages_grow():
    """300 code pages reached one after another (a jmp chain; each lazy scan
    follows it some way): one code-write hook (no gap of 1 MiB) whose range grew
    at most once per scan, not 300 hooks."""
    pages = 300
    image = bytearray(0x1000 * pages)
    for i in range(pages - 1):
        rel = 0x1000 - 5
        image[i * 0x1000:i * 0x1000 + 5] = b"\xe9" + rel.to_bytes(4, "little")
    tail = assemble("mov dword ptr [0x800000], eax\n" + EXIT, LOAD + 0x1000 * (pages - 1))
    image[-0x1000:-0x1000 + len(tail)] = tail
    vm, res = run(GuestImage("chain", "raw", LOAD, [Segment(LOAD, bytes(image))]), "bt", mem_mib=16)
    assert res.exit_status == 0, res.message
    csam = res.extra["csam"]
    assert csam["code_pages"] >= pages
    assert vm.clock.code_write_hooks() == 1
    assert 1 <= csam["write_hook_spans"] <= csam["scans"] < pages // 10
    # the report's count of protection changes, constant (none) however much code
    assert res.extra["protection_changes"] == 0 and vm.protection_changes == 0


def test_the_report_counts_protection_changes():
    from runtime.vm import VM
    from bt.machine import MachineConfig
    from bt.images import load_image
    vm = VM(load_image("demo:hello"), MachineConfig(mode="bt"), stdout=None)
    vm.uc.mem_protect(0x7000, 0x1000, 7)          # what a mode would do: counted
    res = vm.run()
    assert res.exit_status == 0 and res.extra["protection_changes"] == 1


def test_a_store_into_code_on_the_gdt_page_is_seen_in_every_mode():
    """Found with the test above: under trap, code on the page holding the boot
    GDT (write-protected, the VMM performs the store with a host write) kept
    running its old translated block after the guest rewrote it."""
    at = 0xC00
    fn = assemble("mov eax, 0x11111111\nret", at)
    src = (f"mov esp, 0x90000\nmov ebx, {at:#x}\ncall ebx\nmov esi, eax\n"
           f"mov dword ptr [{at + 1:#x}], 0x22222222\ncall ebx\nmov edi, eax\nxor eax, eax\n" + EXIT + "hlt\n")
    img = GuestImage("gdt-page-code", "raw", LOAD, [Segment(LOAD, assemble(src)), Segment(at, fn)])
    for mode in ("emulate", "trap", "bt"):
        _, r = run(img, mode)
        assert r.exit_status == 0, (mode, r.message)
        assert (r.regs["esi"], r.regs["edi"]) == (0x11111111, 0x22222222), mode
