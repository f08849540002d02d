"""Ring 3 running a patched kernel function under paging (bt; runtime/ring3pass.py).

The guest identity-maps its 4 GiB with user-accessible 4 MiB pages (as
kvm-unit-tests does), calls a function from ring 0 (scanned, its sensitive
instruction patched with a jump to a supervisor-only stub) and then from
ring 3 through the fuzzer frame's iretd, which returns by its int 0x80 gate.
bt must give emulate's answers: the frame's dump (registers, exception count
and sum), the retired count, and the guest's RAM.
"""
import pytest

from bt.fuzz.generator import from_body
from conftest import run
from test_emulation_causes import ring3
from test_hyper_slot import _IDENTITY_USER, _PAGING_ON, ram

MEM = 8 << 20
PAD = "mov eax, eax\n" * 3


def body(fn: str, ring0: bool = True) -> str:
    """`fn` as a function s_fn, called at ring 0 first (unless not `ring0`),
    then at ring 3, where esi is what the ring-3 call left."""
    first = "call s_fn\nmov edi, esi\n" if ring0 else ""
    # The movs after `fn` leave room for a jump patch's five bytes.
    return (_IDENTITY_USER + _PAGING_ON + f"jmp s_over\ns_fn:\n{fn}\n{PAD}ret\ns_over:\n{first}"
            + ring3("", "call s_fn", "", False))


def same_as_emulate(text: str, mode: str = "bt"):
    image = from_body(text).image()
    want_vm, want = run(image, "emulate", mem_mib=8, max_instructions=300_000)
    vm, got = run(image, mode, mem_mib=8, max_instructions=300_000)
    assert (got.reason, got.exit_status, got.message) == (want.reason, want.exit_status, want.message)
    assert got.serial == want.serial            # the frame's dump: registers, exceptions
    assert got.regs == want.regs and got.retired == want.retired
    assert ram(vm, 0, MEM) == bytes(want_vm.uc.mem_read(0, MEM))
    return vm, got, want


FUNCTIONS = {
    "pushfd": "pushfd\npop esi",
    "popfd": "pushfd\npush 0x3202\npopfd\npushfd\npop esi\npopfd",
    "sgdt": "sgdt [0x180100]\nmov esi, dword ptr [0x180102]",
    "smsw": "smsw esi\nadd esi, 1",
    "mov-from-ss": "mov esi, ss\nshl esi, 8",
    "sidt": "sidt [0x180100]\nmov esi, dword ptr [0x180100]",
    "mixed": "push ebx\nmov ebx, 3\npushfd\nsgdt [0x180100]\npop esi\nadd esi, ebx\npop ebx",
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_patched_function_called_at_ring3_under_paging_behaves_as_under_emulate(name):
    vm, got, _ = same_as_emulate(body(FUNCTIONS[name]))
    assert got.exit_status == 0, got.message
    assert vm.mode.passage.passages >= 1           # ring 3 did meet the patch
    assert vm.mode.passage.held is None and not vm.mode.patcher.lifted
    assert vm.mode.patcher.stats()["enabled"] >= 1  # and it is back for ring 0


@pytest.mark.parametrize("site,after", [("pushfd", "pop esi"), ("str esi", "inc esi"),
                                        ("smsw esi", "inc esi")], ids=["pushfd", "str", "smsw"])
def test_an_int3_patch_reached_from_ring3_under_paging(site, after):
    """A branch into the bytes after the site refuses the jump patch: the site
    is an int3 patch, whose int3 ring 3 runs in place (issue 21 saw a
    #GP(0x1a), the guest's gate DPL for #BP, around such a patch); no passage."""
    fn = f"cmp esp, 0\nje s_mid\n{site}\ns_mid:\n{after}"
    vm, got, _ = same_as_emulate(body(fn))
    assert got.exit_status == 0, got.message
    assert any(p.kind == "int3" for p in vm.mode.patcher.patches.values())
    assert vm.mode.passage.passages == 0


def test_the_patch_is_back_for_ring0_after_the_passage():
    """Ring 0, ring 3, ring 0 again: the second ring-0 call runs the stub again
    (the jump is in place; no second passage)."""
    text = body(FUNCTIONS["pushfd"]) + "\ncall s_fn\nmov ebx, esi"
    vm, got, _ = same_as_emulate(text)
    assert vm.mode.passage.passages == 1
    p = next(p for p in vm.mode.patcher.patches.values() if p.name.startswith("pushf"))
    assert vm.mode._raw_read(p.site, 1) == b"\xe9"


def test_int3_of_the_passage_is_hidden_from_guest_loads():
    """A ring-3 function that reads its own bytes during the passage (the mov
    is covered by smsw's patch: the smsw's first byte holds an int3 then)
    sees the guest's bytes."""
    fn = "s_me:\nsmsw esi\nmov eax, dword ptr [s_me]\nxor esi, eax"
    vm, got, want = same_as_emulate(body(fn))
    assert got.exit_status == 0
    p = next(p for p in vm.mode.patcher.patches.values() if p.name == "smsw")
    assert len(p.covered) == 2 and vm.mode.passage.passages == 1
