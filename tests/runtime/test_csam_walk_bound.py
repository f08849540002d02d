"""CSAM's bounded lazy walks (runtime/csam.py WALK_BOUND, scanner/scan.py
`walk_bound`): a scan exit decodes about WALK_BOUND instructions and defers the
branch targets beyond; the block check scans each one when it runs.  The guest
must not tell (same result as emulate), and a deferred target must count as a
branch target for the patch policy before anything decoded it."""
import pytest

from bt.fuzz.differential import run_program
from bt.fuzz.generator import from_body
from bt.machine import MachineConfig
from runtime import csam
from runtime.vm import VM

# With a bound of 1 the walk from s_x decodes `push edx; jmp s_t` but defers
# s_t (not decoded yet); the walk from s_a then decodes s_p and s_t as one
# block.  s_t lies inside the 5 bytes a jump patch at s_p would cover, and only
# the deferred `jmp s_t` makes it a branch target when s_p is planned.
BODY = ("xor ecx, ecx\njmp s_x\ns_a:\nnop\ns_p:\npushfd\ns_t:\ninc ecx\ninc ecx\npop edx\nmov eax, 1\n"
        "s_x:\ncmp ecx, 4\njae s_d\ntest ecx, ecx\njz s_a\npush edx\njmp s_t\ns_d:\nnop")


def _bt(body: str):
    vm = VM(from_body(body).image(), MachineConfig(mode="bt", max_instructions=2_000_000), stdout=None)
    return vm, vm.run()


@pytest.mark.parametrize("bound", [1, 2, None])
def test_bounded_walks_agree_with_emulate(bound, monkeypatch):
    monkeypatch.setattr(csam, "WALK_BOUND", bound)
    assert run_program(from_body(BODY)).kinds == ()


def test_a_deferred_target_keeps_a_patch_off_it(monkeypatch):
    monkeypatch.setattr(csam, "WALK_BOUND", None)
    vm_full, res_full = _bt(BODY)
    monkeypatch.setattr(csam, "WALK_BOUND", 1)
    vm, res = _bt(BODY)
    assert res.reason == res_full.reason == "debug-exit"
    full, bounded = vm_full.mode.extra_report(), vm.mode.extra_report()
    # More, smaller scans ...
    assert bounded["csam"]["scans"] > full["csam"]["scans"]
    assert bounded["csam"]["instructions_scanned"] <= full["csam"]["instructions_scanned"]
    # ... and the same patch decision at s_p: s_t was a branch target already.
    refused = "branch-target-inside"
    assert full["patches"]["refused"].get(refused, 0) >= 1
    assert bounded["patches"]["refused"].get(refused, 0) == full["patches"]["refused"][refused]
    assert bounded["csam"]["patch_interior_redirects"] == full["csam"]["patch_interior_redirects"] == 0
    assert bounded["csam"]["patch_interior_replans"] == full["csam"]["patch_interior_replans"] == 0


def test_without_deferred_targets_in_the_index_the_patch_covers_it(monkeypatch):
    # The check above can fail: with deferred targets kept out of the
    # branch-target index the policy covers s_t, and the later jump into the
    # patch goes through the block check's interior path instead.
    from scanner.cfg import CFG
    monkeypatch.setattr(csam, "WALK_BOUND", 1)
    monkeypatch.setattr(CFG, "defer", lambda self, item: self.deferred.setdefault(item[1], []).append(item))
    vm, res = _bt(BODY)
    rep = vm.mode.extra_report()
    assert rep["csam"]["patch_interior_redirects"] + rep["csam"]["patch_interior_replans"] >= 1
