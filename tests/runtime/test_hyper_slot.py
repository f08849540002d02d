"""A guest whose own directory maps the hypervisor area's 4 MiB (runtime/paging.py,
"A guest that puts a present entry into the slot"): kvm-unit-tests
identity-maps all 4 GiB with 4 MiB pages.  The guest runs on as under emulate
while it leaves the area's addresses alone; when it uses them the area moves to
a slot its directory leaves free, or, with none free, the run ends cleanly."""
import struct

import pytest
from unicorn import x86_const as X

from bt.machine import DEFAULT_HYPER_BASE
from conftest import EXIT, raw_guest, run

PD = 0x30000
OUT = 0x40000                 # the guest's results
AREA = DEFAULT_HYPER_BASE     # MachineConfig.hyper_base's default (0xFE800000)
AREA_USE = f"{AREA + 0x10:#x}"   # the address the guests below use, as messages name it
SLOT = AREA >> 22
BIG = 0x83                    # present, writable, 4 MiB


def directory(free=(), moved=None):
    """Every 4 MiB of the 4 GiB identity-mapped but the indexes in `free`;
    `moved`: (index, physical) maps that index elsewhere."""
    entries = [0 if i in free else (i << 22) | BIG for i in range(1024)]
    if moved is not None:
        index, phys = moved
        entries[index] = phys | BIG
    return struct.pack("<1024I", *entries)


def paging_on(body: str, pd: bytes):
    return raw_guest(f"""
        mov esp, 0x90000
        mov eax, cr4
        or eax, 0x10
        mov cr4, eax
        mov eax, {PD:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov eax, dword ptr [{PD + SLOT * 4:#x}]
        mov dword ptr [{OUT:#x}], eax
        {body}
        """ + EXIT, [(PD, pd)])


def ram(vm, addr, size):
    return vm.mode.guest_visible(addr, size)


def same_as_emulate(image, mode):
    want_vm, want = run(image, "emulate")
    vm, got = run(image, mode)
    assert (got.reason, got.exit_status, got.message) == (want.reason, want.exit_status, want.message)
    assert got.retired == want.retired and got.regs == want.regs and got.serial == want.serial
    for addr, size in ((PD, 4096), (OUT, 16)):
        assert ram(vm, addr, size) == bytes(want_vm.uc.mem_read(addr, size))
    return vm, got


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_a_guest_mapping_all_4_gib_runs_and_reads_its_own_slot(mode):
    """Before this every kvm-unit-tests image ended here with a VMM error."""
    vm, got = same_as_emulate(paging_on("", directory()), mode)
    assert got.exit_status == 0, got.message
    assert struct.unpack("<I", ram(vm, OUT, 4))[0] & ~0x60 == AREA | BIG
    hm = vm.mode.hyper_mapping
    assert hm.guest_values and hm.guest_values[0] & ~0x60 == AREA | BIG
    # The VMM's entry is still the one the CPU walks: the area stayed.
    assert vm.mode.hyper.base == AREA and vm.mode.relocations == 0
    assert hm._read(hm.slots[0][0], 4) == hm.our_entry()


TOUCH = f"""
        mov ebx, 0x12345678
        mov dword ptr [{AREA + 0x10:#x}], ebx
        mov ecx, dword ptr [{AREA + 0x10:#x}]
        mov edx, dword ptr [0x400010]
        mov dword ptr [{OUT + 4:#x}], ecx
        mov dword ptr [{OUT + 8:#x}], edx
        mov eax, dword ptr [{PD + 0x3F0 * 4:#x}]
        mov dword ptr [{OUT + 12:#x}], eax
"""


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_using_the_areas_addresses_moves_the_area_to_a_free_slot(mode):
    """The guest maps the area's base onto RAM at 0x400000 and leaves 0xFC000000
    unmapped: its store and load there reach its RAM as under emulate, the
    area now lives at 0xFC000000."""
    free = 0xFC000000 >> 22
    vm, got = same_as_emulate(paging_on(TOUCH, directory(free=(free,), moved=(SLOT, 0x400000))), mode)
    assert got.exit_status == 0, got.message
    # The area's new slot reads as the guest left it (0), the VMM's entry hidden.
    assert struct.unpack("<III", ram(vm, OUT + 4, 12)) == (0x12345678, 0x12345678, 0)
    assert vm.mode.hyper.base == 0xFC000000 and vm.mode.relocations == 1
    assert vm.mode.hyper_mapping.slots[0][0] == PD + free * 4
    assert got.extra["hypervisor_relocations"] == 1 and got.extra["hypervisor_base"] == "0xfc000000"
    if mode == "bt":
        assert got.extra["csam"]["relocations"] == 1


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_the_area_never_moves_over_ram_or_the_apic_window(mode):
    """Free entries only below RAM's top and over the APIC window: no slot
    fits, the run ends naming the address (the guest's page is RAM here, so
    emulate's run would go on: a documented limit, never a wrong value)."""
    low = range(2, 16)                              # 8-64 MiB: RAM (64 MiB by default)
    vm, got = run(paging_on(TOUCH, directory(free=(*low, 0x3FB), moved=(SLOT, 0x400000))), mode)
    assert got.reason == "vmm-error" and got.exit_status == 70
    assert AREA_USE in got.message and "no 4 MiB slot free" in got.message
    assert "Traceback" not in got.message
    assert vm.mode.hyper.base == AREA


@pytest.mark.parametrize("mode", ["trap", "bt"])
@pytest.mark.parametrize("access", [f"mov eax, dword ptr [{AREA_USE}]", f"mov dword ptr [{AREA_USE}], ebx",
                                    f"mov eax, {AREA:#x}\njmp eax"])
def test_no_free_slot_and_nothing_behind_the_guests_page_ends_as_emulate(mode, access):
    """kvm-unit-tests' identity map: the guest's page at the area's base points at
    physical memory that is not there, so emulate ends with an unmapped access
    at that address; trap and bt end the same way, at the same instruction."""
    same_as_emulate(paging_on(access, directory()), mode)


# All 4 GiB identity-mapped with user 4 MiB pages, the directory at 0x7F0000 (edi).
_IDENTITY_USER = """
        mov edi, 0x7F0000
        xor ecx, ecx
        s_fill:
        mov eax, ecx
        shl eax, 22
        or eax, 0x87
        mov dword ptr [edi + ecx*4], eax
        inc ecx
        cmp ecx, 1024
        jne s_fill
        """
_PAGING_ON = """
        mov eax, cr4
        or eax, 0x10
        mov cr4, eax
        mov cr3, edi
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        """


def test_ring3_using_the_areas_addresses_moves_the_area_too():
    """Ring 3 meets the VMM's supervisor-only entry (#PF, P set) where the
    guest's own user page maps the address: the area moves before the next
    slice and the access runs again (runtime/trap.py `retries_fault`).  In the
    fuzzer's frame (IDT, ring-3 gate): every answer as under emulate."""
    from test_emulation_causes import OK, dumps, ring3
    from bt.fuzz.generator import from_body
    fill = _IDENTITY_USER + f"""
        mov dword ptr [edi + {0x3F0 * 4:#x}], 0
        mov dword ptr [edi + {SLOT * 4:#x}], 0x400087
        mov dword ptr [0x400010], 0x5A5A1234
        """ + _PAGING_ON
    site = f"mov esi, dword ptr [{AREA + 0x10:#x}]\nmov dword ptr [{AREA + 0x14:#x}], esi"
    body = fill + ring3("", site, "mov edi, dword ptr [0x400014]", False)
    d = dumps(body)
    assert d["emulate"]["end"] == OK and d["emulate"]["esi"] == d["emulate"]["edi"] == 0x5A5A1234
    assert d["emulate"]["exc_count"] == 0
    assert d["bt"] == d["emulate"]
    leaks = ("cs", "ss", "eflags")          # trap's ring-1 RPLs and real IOPL (docs/fidelity.md)
    assert {k: v for k, v in d["trap"].items() if k not in leaks} == \
        {k: v for k, v in d["emulate"].items() if k not in leaks}
    for m in ("trap", "bt"):
        vm, res = run(from_body(body).image(), m, mem_mib=8, max_instructions=200_000)
        assert res.exit_status == 0 and vm.mode.hyper.base == 0xFC000000 and vm.mode.relocations == 1, m


@pytest.mark.parametrize("mode", ["trap", "bt"])
@pytest.mark.parametrize("free", [True, False], ids=["moved", "no-slot"])
def test_an_emulated_instructions_operand_in_the_area(mode, free):
    """`lidt [base + 0x10]` faults at ring 1 and its routine reads the operand
    in the guest's place: the walk meets the VMM's entry, not the guest's
    (runtime/memory.py `AreaInUse`).  With a free slot the area moves and the
    routine runs again, reading the guest's bytes (as emulate); with none the
    run ends with the VMM error naming the address, never a #PF the guest
    would not get."""
    body = (f"mov dword ptr [0x400010], 0x123407FF\nmov dword ptr [0x400014], 0x5678\n"
            f"lidt [{AREA + 0x10:#x}]")
    image = paging_on(body, directory(free=(0x3F0,) if free else (), moved=(SLOT, 0x400000)))
    if free:
        vm, got = same_as_emulate(image, mode)
        assert got.exit_status == 0 and vm.mode.relocations == 1
        want_vm, _ = run(image, "emulate")
        _, base, limit, _ = want_vm.uc.reg_read(X.UC_X86_REG_IDTR)
        assert (limit, base & 0xFFFF) == (0x7FF, 0x1234)        # the guest's bytes, not the area's
        assert vm.mode.vcpu.idtr() == (base, limit)
    else:
        vm, got = run(image, mode)
        assert got.reason == "vmm-error" and AREA_USE in got.message
        assert not got.counters.get("exceptions_delivered")


def test_bt_ring3_running_a_patched_kernel_page_under_paging_is_not_a_use_of_the_area():
    """kvm-unit-tests' umip runs kernel functions at ring 3: under paging the
    stub cache is supervisor-only, so the patch's jump faults at the stub.
    That is the VMM's reach, not the guest's use of the area (no move, no
    unmapped access): ring 3 runs the guest's own instructions there
    (runtime/ring3pass.py; tests/runtime/test_ring3_passage.py) and the run
    ends as emulate's."""
    from test_emulation_causes import ring3
    from bt.fuzz.generator import from_body
    # s_fn runs at ring 0 first (scanned, its sgdt patched), then at ring 3.
    fn = "jmp s_over\ns_fn:\nsgdt [0x180100]\nret\ns_over:\ncall s_fn\n"
    body = _IDENTITY_USER + _PAGING_ON + fn + ring3("", "call s_fn", "", False)
    vm, got = run(from_body(body).image(), "bt", mem_mib=8, max_instructions=200_000)
    _, want = run(from_body(body).image(), "emulate", mem_mib=8, max_instructions=200_000)
    assert want.exit_status == 0
    assert (got.reason, got.exit_status, got.serial, got.retired) == \
        (want.reason, want.exit_status, want.serial, want.retired), got.message
    assert vm.mode.relocations == 0 and vm.mode.passage.passages == 1


@pytest.mark.parametrize("mode", ["trap", "bt"])
def test_ring3_with_no_free_slot_ends_as_emulate(mode):
    """kvm-unit-tests' case at ring 3: every entry present, the guest's page at
    the area's base points at nothing; the run ends where and as emulate's does."""
    from test_emulation_causes import ring3
    from bt.fuzz.generator import from_body
    site = f"mov esi, dword ptr [{AREA + 0x10:#x}]"
    body = _IDENTITY_USER + _PAGING_ON + ring3("", site, "", False)
    _, want = run(from_body(body).image(), "emulate", mem_mib=8, max_instructions=200_000)
    vm, got = run(from_body(body).image(), mode, mem_mib=8, max_instructions=200_000)
    assert want.reason == "unmapped-access" and AREA_USE in want.message
    assert (got.reason, got.message, got.retired) == (want.reason, want.message, want.retired)
    assert vm.mode.relocations == 0
