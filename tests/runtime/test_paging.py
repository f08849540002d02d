"""runtime/paging.py: the hypervisor area stays reachable in every address
space of a paging guest under trap, and the guest keeps its own value of the
directory slot the VMM borrows (PD[hyper_base >> 22], 0xFE800000 -> entry
0x3FA by default)."""
import struct

import pytest

from bt.machine import DEFAULT_HYPER_BASE
from conftest import EXIT, assemble, raw_guest, run

PD1, PD2, PT = 0x30000, 0x32000, 0x31000
SLOT = (DEFAULT_HYPER_BASE >> 22) * 4
AREA_USE = f"{DEFAULT_HYPER_BASE + 0x10:#x}"
OUT = 0x40000            # the guest's results: 4 dwords


def tables():
    pt = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    pd = struct.pack("<I", PT | 3)
    return [(PT, pt), (PD1, pd), (PD2, pd)]


def guest(slot_value):
    """Paging on in PD1, a store of `slot_value` into PD1's VMM slot, a segment
    reload (the CPU reads the shadow GDT through the area's entry), a switch to
    PD2 and a look at PD1's slot from there, then back to PD1."""
    return raw_guest(f"""
        mov eax, {PD1:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov dword ptr [{PD1 + SLOT:#x}], {slot_value:#x}
        mov eax, ds
        mov ds, eax
        mov es, eax
        mov eax, {PD2:#x}
        mov cr3, eax
        mov eax, dword ptr [{PD1 + SLOT:#x}]
        mov dword ptr [{OUT:#x}], eax
        mov eax, dword ptr [{PD2 + SLOT:#x}]
        mov dword ptr [{OUT + 4:#x}], eax
        mov eax, {PD1:#x}
        mov cr3, eax
        mov eax, ds
        mov ds, eax
        mov eax, dword ptr [{PD1 + SLOT:#x}]
        mov dword ptr [{OUT + 8:#x}], eax
        """ + EXIT, tables())


def results(vm):
    return struct.unpack("<III", vm.uc.mem_read(OUT, 12))


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_the_guest_keeps_its_own_slot_value_and_the_area_stays_reachable(mode, mem_protect_calls):
    want_vm, want = run(guest(0x56780000), "emulate")
    vm, got = run(guest(0x56780000), mode)
    assert got.exit_status == want.exit_status == 0, got.message
    # Read from another address space: the guest's own value, as under emulate.
    assert results(vm)[0] == results(want_vm)[0] == 0x56780000
    # Read in the current directory: the guest's own values too, as under emulate
    # (the VMM's entry is there, hidden from guest loads by the slot's read hooks:
    # runtime/_isolation.c), while the CPU's walks keep reaching the area.
    assert results(want_vm)[1:] == (0, 0x56780000)
    assert results(vm)[1:] == (0, 0x56780000)
    assert vm.mode.hyper_mapping.view.stats()["slot_reads_hidden"] == 2
    stats = vm.mode.hyper_mapping.stats()
    assert stats["slot_writes"] == 1 and stats["guest_slot_values"] == [hex(0x56780000)]
    # The store landed (no protection, no write hook: runtime/paging.py); the
    # segment reload after it met the guest's entry, the VMM put its own back
    # and the reload ran again, invisible to the guest and uncounted.
    assert stats["faults_retried"] == 1
    assert got.retired == want.retired and got.regs == want.regs
    assert not got.counters.get("exceptions_delivered")
    # The directory costs no mem_protect call (trap's directory watch once made
    # one per CR3 switch), nor does anything else.
    assert mem_protect_calls == []


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_a_present_guest_entry_stored_into_the_slot_is_kept_and_the_guest_runs_on(mode):
    """It once ended the run with a VMM error; now the area stays under the
    VMM's entry while the guest leaves its addresses alone
    (tests/runtime/test_hyper_slot.py: what happens when it does not).
    Without CR4.PSE the value names a page table (zeros here): the segment
    reload's walk for the shadow GDT goes through it to a not-present entry,
    the #PF is retried as for any guest store into the slot, and that walk set
    the entry's accessed bit, which the guest then sees (a documented leak:
    docs/paging-plan.md, "A present guest entry in the slot")."""
    want_vm, want = run(guest(0x00400083), "emulate")
    vm, got = run(guest(0x00400083), mode)
    assert got.exit_status == want.exit_status == 0, got.message
    assert results(want_vm) == (0x00400083, 0, 0x00400083)
    assert results(vm) == (0x004000A3, 0, 0x004000A3)
    assert got.retired == want.retired and got.regs == want.regs
    assert vm.mode.hyper.base == DEFAULT_HYPER_BASE and vm.mode.hyper_mapping.stats()["faults_retried"] == 1


def test_a_cr3_switch_never_reuses_the_decode_of_other_code_at_the_same_address():
    """trap's site decoder caches per EIP and re-validates against the bytes
    there: under paging those are read through the guest's tables.  Linear
    0x400000 runs `mov eax, cr3` in one space and `mov ebx, cr0` in the other;
    physical 0x400000 holds the first space's bytes, so validating against it
    (linear taken as physical) would replay the old decode."""
    code_a = b"\x0f\x20\xd8\xc3"            # mov eax, cr3 ; ret
    code_b = b"\x0f\x20\xc3\xc3"            # mov ebx, cr0 ; ret
    pt = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    pd1 = struct.pack("<II", PT | 3, 0x33000 | 3)
    pd2 = struct.pack("<II", PT | 3, 0x34000 | 3)
    src = f"""
        mov esp, 0x90000
        mov eax, {PD1:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        xor ebx, ebx
        mov eax, 0x400000
        call eax
        mov dword ptr [{OUT:#x}], eax
        mov dword ptr [{OUT + 4:#x}], ebx
        mov eax, {PD2:#x}
        mov cr3, eax
        xor eax, eax
        mov eax, 0x400000
        call eax
        mov dword ptr [{OUT + 8:#x}], ebx
        """ + EXIT
    extra = [(PT, pt), (PD1, pd1), (PD2, pd2), (0x33000, struct.pack("<I", 0x38000 | 3)),
             (0x34000, struct.pack("<I", 0x39000 | 3)), (0x38000, code_a), (0x39000, code_b),
             (0x400000, code_a)]
    want_vm, want = run(raw_guest(src, extra), "emulate")
    vm, got = run(raw_guest(src, extra), "trap")
    assert got.exit_status == want.exit_status == 0, got.message
    assert results(vm) == results(want_vm)
    assert results(vm)[0] == PD1 and results(vm)[2] & 0x80000000


def _touch_the_area(access):
    pt = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    return raw_guest(f"""
        mov esp, 0x90000
        mov eax, {PD1:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov ebx, 0x77
        {access}
        """ + EXIT, [(PT, pt), (PD1, struct.pack("<I", PT | 3))])


@pytest.mark.parametrize("access", [f"mov eax, dword ptr [{AREA_USE}]", f"mov dword ptr [{AREA_USE}], ebx",
                                    f"mov eax, {DEFAULT_HYPER_BASE:#x}\njmp eax"])
def test_the_guest_finds_nothing_at_the_areas_addresses(access):
    """The area is reachable only through the VMM's entry; the guest's own entry
    is not present, so its access gets emulate's #PF (here: no IDT, so the run
    ends as a triple fault, at the same instruction), not the end of the run
    as an unmapped access.  Under paging Unicorn turns the guard's refusal
    into that #PF itself."""
    want_vm, want = run(_touch_the_area(access), "emulate")
    vm, got = run(_touch_the_area(access), "trap")
    assert want.reason == "triple-fault"
    assert (got.reason, got.retired, got.regs, got.message) == (want.reason, want.retired, want.regs, want.message)


# -- bt under paging: CSAM's views (runtime/views.py) ------------------------
CODE_A, CODE_B = 0x38000, 0x39000
HIGH = 0xC0000000


def _bt_tables(code_a: bytes, code_b: bytes):
    """PD1 and PD2 share the identity map of 0-4 MiB (also at HIGH: the high
    alias of physical 0-4 MiB); linear 0x400000 is CODE_A in PD1, CODE_B in PD2."""
    pt = b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024))
    pd = lambda x: struct.pack("<II", PT | 3, x | 3) + bytes(4 * 0x2FE) + struct.pack("<I", PT | 3)
    return [(PT, pt), (PD1, pd(0x33000)), (PD2, pd(0x34000)),
            (0x33000, struct.pack("<I", CODE_A | 3)), (0x34000, struct.pack("<I", CODE_B | 3)),
            (CODE_A, code_a), (CODE_B, code_b)]


PAGING_ON = f"""
    mov esp, 0x90000
    mov eax, {PD1:#x}
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
"""


def _both(src: str, extra):
    want_vm, want = run(raw_guest(src, extra), "emulate")
    vm, got = run(raw_guest(src, extra), "bt")
    assert want.exit_status == 0, want.message
    assert got.exit_status == 0, got.message
    assert got.retired == want.retired
    n = 16
    assert vm.uc.mem_read(OUT, 4 * n) == want_vm.uc.mem_read(OUT, 4 * n)
    return want_vm, vm, got


# Sensitive code bt patches (cli traps, fault-driven jump patch; pushfd after it).
ROUTINE_A = "cli\npushfd\npop eax\nsti\nmov ecx, 0xaaaa\nret"
ROUTINE_B = "mov ecx, 0xbbbb\ncli\npushfd\npop eax\nsti\nret"


def test_bt_never_runs_old_code_at_a_linear_address_after_a_cr3_switch():
    """Linear 0x400000 runs A (patched after its first trap) in PD1 and B in
    PD2; back in PD1, A again.  B's page was scanned and patched before, through
    its high alias in PD1: its flags say "instruction start" at the offsets
    0x400000 reaches, and its jump patches were planned for the alias.  Neither
    the PD1 view of 0x400000 nor B's alias view may vouch for PD2's
    0x400000: ECX shows which code ran each time, EAX the IF pushfd saw."""
    code_a = assemble(ROUTINE_A, 0x400000)
    code_b = assemble(ROUTINE_B, 0x400000)
    calls = []
    for i, (pd, at) in enumerate([(PD1, 0x400000), (PD1, 0x400000), (PD1, HIGH + CODE_B),
                                  (PD1, HIGH + CODE_B), (PD2, 0x400000), (PD2, 0x400000),
                                  (PD1, 0x400000)]):
        calls.append(f"""
            mov eax, {pd:#x}
            mov cr3, eax
            mov eax, {at:#x}
            call eax
            mov dword ptr [{OUT + 8 * i:#x}], ecx
            mov dword ptr [{OUT + 8 * i + 4:#x}], eax
            """)
    src = PAGING_ON + "".join(calls) + EXIT
    want_vm, vm, got = _both(src, _bt_tables(code_a, code_b))
    ecx = struct.unpack("<14I", vm.uc.mem_read(OUT, 56))[::2]
    assert ecx == (0xAAAA, 0xAAAA, 0xBBBB, 0xBBBB, 0xBBBB, 0xBBBB, 0xAAAA)
    csam = got.extra["csam"]
    assert csam["view_moves"] >= 2                    # PD2's page took 0x400000, then PD1's again
    assert got.extra["patches"]["installed"]          # the sensitive code was patched, not only trapped


def test_bt_sees_code_written_through_one_alias_and_run_through_another():
    """CODE_A is linear 0x400000 (PD1) and HIGH + CODE_A.  It runs (and is
    patched) at 0x400000, runs through the high alias (whose jump patches
    planned for 0x400000 must not be taken from there) and at 0x400000 again;
    is rewritten through the high alias and run at 0x400000, run through the
    high alias, rewritten through 0x400000 and run through the high alias."""
    code_a = assemble(ROUTINE_A, 0x400000)
    new1 = assemble("mov ecx, 0x1111\ncli\npushfd\npop eax\nsti\nret", 0)
    new2 = assemble("mov ecx, 0x2222\ncli\npushfd\npop eax\nsti\nret", 0)
    def write(at: int, code: bytes) -> str:
        return "".join(f"mov byte ptr [{at + i:#x}], {b:#x}\n" for i, b in enumerate(code))
    def call(at: int, slot: int) -> str:
        return f"mov eax, {at:#x}\ncall eax\nmov dword ptr [{OUT + 4 * slot:#x}], ecx\n" \
               f"mov dword ptr [{OUT + 4 * slot + 4:#x}], eax\n"
    src = PAGING_ON + call(0x400000, 0) + call(0x400000, 0) + call(HIGH + CODE_A, 2) \
        + call(HIGH + CODE_A, 2) + call(0x400000, 4) + write(HIGH + CODE_A, new1) \
        + call(0x400000, 6) + call(HIGH + CODE_A, 8) + write(0x400000, new2) + call(HIGH + CODE_A, 10) + EXIT
    want_vm, vm, got = _both(src, _bt_tables(code_a, b"\xc3"))
    ecx = struct.unpack("<12I", vm.uc.mem_read(OUT, 48))[::2]
    assert ecx == (0xAAAA, 0xAAAA, 0xAAAA, 0x1111, 0x1111, 0x2222)
    csam = got.extra["csam"]
    assert csam["smc_invalidations"] >= 2 and csam["view_moves"] >= 1


def test_csam_views_cost_no_mem_protect_calls(mem_protect_calls):
    """The CR3-switch guest above: neither trap nor bt makes a mem_protect call;
    scanning, patching and moving views under paging use native hooks only, and
    so does the GDT watch (runtime/tablewatch.py)."""
    code_a = assemble(ROUTINE_A, 0x400000)
    code_b = assemble(ROUTINE_B, 0x400000)
    calls = "".join(f"mov eax, {pd:#x}\nmov cr3, eax\nmov eax, {at:#x}\ncall eax\n"
                    for pd, at in [(PD1, 0x400000), (PD1, HIGH + CODE_B), (PD2, 0x400000), (PD1, 0x400000)])
    src = PAGING_ON + calls + EXIT
    trap_vm, trap = run(raw_guest(src, _bt_tables(code_a, code_b)), "trap")
    bt_vm, bt = run(raw_guest(src, _bt_tables(code_a, code_b)), "bt")
    assert trap.exit_status == bt.exit_status == 0, bt.message
    assert bt.extra["csam"]["view_moves"] >= 2
    assert mem_protect_calls == []


def test_bt_stub_reached_after_a_guest_store_into_the_slot():
    """Under bt the first thing to reach the area after the guest's store is the
    CPU fetching a patched pushfd's stub: that #PF (CR2 in the area) is the
    VMM's own, repaired and retried, and the guest sees emulate's results."""
    src = raw_guest(f"""
        mov esp, 0x90000
        mov eax, {PD1:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov dword ptr [{PD1 + SLOT:#x}], 0
        cli
        pushfd
        pop eax
        mov dword ptr [{OUT:#x}], eax
        """ + EXIT, tables())
    want_vm, want = run(src, "emulate")
    vm, got = run(src, "bt")
    assert got.exit_status == want.exit_status == 0, got.message
    assert results(vm)[0] == results(want_vm)[0]
    assert got.retired == want.retired
    stats = vm.mode.hyper_mapping.stats()
    assert stats["faults_retried"] == 1 and stats["guest_slot_values"] == ["0x0"]
    # one jump patch, pushfd's (cli runs natively: docs/fidelity.md, "IF in the real EFLAGS")
    assert got.extra["patches"]["installed"] == {"pushfd": 1}


@pytest.mark.parametrize("rewrite,bound", [(False, None), (True, None), (False, 0)])
def test_bt_alternating_aliases_scan_each_alias_once(rewrite, bound, monkeypatch):
    """CODE_A's page run through 0x400000 and its high alias, alternating 6
    times: each alias is scanned once, and on each return the parked scan of
    that alias serves again (runtime/views.py `_resume`: the page's bytes
    compared whole) with its patches re-planned -- no rescan per alternation.
    With a store into the routine through the other alias while a scan is
    parked (`rewrite`), the comparison fails and that alias is scanned anew:
    the new bytes run (ECX).  With no parked scan kept (`bound` 0:
    MAX_PARKED, the bound Linux's one-way move from its identity alias needs)
    every alternation rescans, as before parking."""
    if bound is not None:
        monkeypatch.setattr("runtime.views.MAX_PARKED", bound)
    code_a = assemble(ROUTINE_A, 0x400000)
    def call(at: int, slot: int) -> str:
        return f"mov eax, {at:#x}\ncall eax\nmov dword ptr [{OUT + 4 * slot:#x}], ecx\n" \
               f"mov dword ptr [{OUT + 4 * slot + 4:#x}], eax\n"
    body = ""
    for i in range(6):
        body += call(0x400000 if i % 2 == 0 else HIGH + CODE_A, 0)
    if rewrite:
        # mov ecx, 0xaaaa -> mov ecx, 0x5555 (its immediate's low byte), through the high alias
        imm = code_a.index(b"\xb9\xaa\xaa") + 1
        body += f"mov byte ptr [{HIGH + CODE_A + imm:#x}], 0x55\nmov byte ptr [{HIGH + CODE_A + imm + 1:#x}], 0x55\n"
        body += call(0x400000, 2)
    src = PAGING_ON + body + EXIT
    want_vm, vm, got = _both(src, _bt_tables(code_a, b"\xc3"))
    csam = got.extra["csam"]
    assert csam["view_moves"] >= 5
    if bound == 0:
        assert csam["view_reuses"] == 0 and csam["pages_rescanned"] >= 4
    elif not rewrite:
        assert csam["view_reuses"] >= 4 and csam["pages_rescanned"] == 0
        assert got.extra["patches"]["installed"]
    else:
        assert struct.unpack("<I", vm.uc.mem_read(OUT + 8, 4))[0] == 0x5555
        assert csam["smc_invalidations"] >= 1


def test_bt_paging_demo_with_every_parked_scan_found_stale(monkeypatch):
    """The other way back: every parked alias scan judged stale (as after a
    store nobody saw) is forgotten -- outside the scanner's walk, whose reads
    then fail instead of changing the CFG under it (runtime/views.py
    `claim_view`) -- and scanned anew; demo:paging still gives emulate's
    output and count, with no start left unscannable."""
    from bt.demos import expected_output, load_demo
    from bt.machine import MachineConfig
    from runtime.csam import CSAM
    from runtime.vm import VM
    want = VM(load_demo("paging", 64 << 20), MachineConfig(mode="emulate"), stdout=None).run()
    normal = VM(load_demo("paging", 64 << 20), MachineConfig(mode="bt"), stdout=None).run()
    monkeypatch.setattr(CSAM, "_still_valid", lambda self, page, f, frame, snapshot: False)
    got = VM(load_demo("paging", 64 << 20), MachineConfig(mode="bt"), stdout=None).run()
    for res in (normal, got):
        assert res.exit_status == 0, res.message
        assert res.serial == expected_output("paging") and res.retired == want.retired
        assert res.extra["csam"]["unscannable_starts"] == 0
    assert got.extra["csam"]["view_reuses"] == 0 < normal.extra["csam"]["view_reuses"]
    assert normal.extra["csam"]["scans"] < got.extra["csam"]["scans"]
