"""benchmarks/bt_cost.py: its configurations run the demo to emulate's result and
leave the runtime classes as they found them."""
from runtime import clock, hyper, isolation, trap

from scripts import load_script


def test_every_configuration_agrees_with_emulate_and_is_undone():
    mod = load_script("bt_cost")
    before = (hyper.HyperArea.map_at, isolation.Isolation.arm,
              clock.InstructionClock.watch_code_writes, trap.TrapMode.hook_shadow_gdt)
    d = mod.measure(["probe-flags"], 1)
    configs = d["demos"][0]["configs"]
    assert set(configs) == set(mod.CONFIGS)
    # the guard sees the stubs' accesses only when it is there
    assert configs["bt"]["stub_accesses"] > 0
    assert configs["no-guard"]["stub_accesses"] == configs["no-hooks"]["stub_accesses"] == 0
    assert (hyper.HyperArea.map_at, isolation.Isolation.arm,
            clock.InstructionClock.watch_code_writes, trap.TrapMode.hook_shadow_gdt) == before
