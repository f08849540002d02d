"""Causes 11 and 12: control that reaches the bytes a jump patch covers after the
patch is in place (a computed or later-found branch, a jump into the middle of a
covered instruction, a guest handler resuming after a fault inside the stub).

The block check (runtime/_clock.c known_start) refuses a block start inside a
patch's covered bytes; CSAM sends it to the stub's copy of that instruction
(`patch_interior_redirects`) or removes the patch and re-plans the site
(`patch_interior_replans`, runtime/csam.py `_into_patch`).  Each reproducer
(tests/conformance/regressions.py) must agree with emulate, take the path it
is meant to take, and diverge when the check's table of covered bytes is left
empty -- so the tests can fail."""
import functools

import pytest

from bt.fuzz.differential import run_program
from bt.fuzz.generator import from_body, generate
from bt.machine import MachineConfig
from regressions import FIXED
from runtime import csam
from runtime.vm import VM

INTERIOR = {e["name"]: e for e in FIXED if e["cause"] in (11, 12)}
PATH = {"computed-jump-to-second-covered-insn": "patch_interior_redirects",
        "later-found-direct-jump-into-patch": "patch_interior_redirects",
        "jump-into-the-middle-of-a-covered-insn": "patch_interior_replans",
        "fault-in-stub-resumes-inside-patch": "patch_interior_redirects"}


def _bt(body: str):
    cfg = MachineConfig(mode="bt", max_instructions=2_000_000)
    vm = VM(from_body(body).image(), cfg, stdout=None)
    return vm, vm.run()


def test_every_reproducer_names_its_path():
    assert set(INTERIOR) == set(PATH)


@pytest.mark.parametrize("name", sorted(PATH))
def test_start_inside_a_patch_takes_its_path_and_agrees(name):
    entry = INTERIOR[name]
    assert run_program(from_body(entry["body"])).kinds == ()
    vm, res = _bt(entry["body"])
    assert res.reason == "debug-exit"
    assert vm.mode.extra_report()["csam"][PATH[name]] >= 1


@pytest.mark.parametrize("name", sorted(PATH))
def test_without_the_interior_check_each_one_diverges(name, monkeypatch):
    entry = INTERIOR[name]
    real = csam.CSAM._patches_changed

    def no_interior(self, lo, hi):
        real(self, lo, hi)
        for page in list(self._interior):
            self._interior.pop(page)
            self.clock.c.set_page(csam.INTERIOR, page, None)
    monkeypatch.setattr(csam.CSAM, "_patches_changed", no_interior)
    # The hypervisor area where the reproducers were recorded: without the
    # check, what runs inside a patch jump's displacement depends on the base
    # (at 0xFE800000 the displacement holds 73 FE, jae to itself, and the bt
    # run never ends; test_compare_names_culprit.py does the same).
    from bt.fuzz import differential
    monkeypatch.setattr(differential, "MachineConfig", functools.partial(MachineConfig, hyper_base=0xFF000000))
    # (a generous wall limit: one of them loops, with exits, to the instruction
    # budget, which a loaded machine may not reach in a few seconds)
    diff = run_program(from_body(entry["body"]), wall_limit=60.0)
    assert diff.kinds and diff.guest_visible == entry["kinds"]   # ("retired",) = only the count
    assert (diff.other.exit_status, diff.other.reason) == entry["ends"][1]
    assert entry["detail"] in diff.text()


def test_the_generator_produces_starts_inside_patches():
    """The fuzzer's `patch_interior` feature reaches both paths."""
    seen = {"patch_interior_redirects": 0, "patch_interior_replans": 0}
    for seed in range(8):
        prog = generate(seed, 6, ["patch_interior"])
        assert run_program(prog).kinds == ()
        cfg = MachineConfig(mode="bt", max_instructions=5_000_000)
        vm = VM(prog.image(), cfg, stdout=None)
        vm.run()
        for k in seen:
            seen[k] += vm.mode.extra_report()["csam"][k]
    assert all(seen.values()), seen
