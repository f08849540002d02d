"""bt.api: the public API the notebooks use (docs/api.md)."""
from __future__ import annotations

import pytest

from bt import api
from bt.errors import BadInput


def test_sampled_run_equals_plain_run():
    plain = api.run("demo:probe-flags", "bt", mem_mib=4)
    sampled = api.run("demo:probe-flags", "bt", mem_mib=4, sample_every=100_000)
    assert (sampled.retired, sampled.exits, sampled.serial) == (plain.retired, plain.exits, plain.serial)
    # Budgets only add emulation slices; every other counter is unchanged.
    drop = lambda c: {k: v for k, v in c.items() if k != "slices"}
    assert drop(sampled.counters) == drop(plain.counters)
    assert sampled.counters["slices"] > plain.counters["slices"]
    points = [p["retired"] for p in sampled.timeline]
    assert points[0] == 0 and points[-1] == plain.retired
    assert all(b - a <= 100_000 for a, b in zip(points, points[1:]))
    exits = [p["exits"] for p in sampled.timeline]
    assert exits == sorted(exits) and exits[-1] == plain.exits


def test_sampling_respects_the_budget():
    r = api.run("demo:timer", "trap", mem_mib=4, max_instructions=250_000, sample_every=100_000)
    assert r.reason == "budget" and r.retired == 250_000
    assert [p["retired"] for p in r.timeline] == [0, 100_000, 200_000, 250_000]


def test_plan_matches_the_patches_a_bt_run_installs():
    r = api.run("demo:probe-flags", "bt", mem_mib=4)
    plan = api.plan_patches(api.scan("demo:probe-flags", mem_mib=4))
    planned = {p.site for p in plan if p.action == "jump"}
    installed = {a for a, p in r.patches.items() if p.kind == "jump"}
    assert planned == installed and installed
    by_site = {p.site: p for p in plan}
    for a, p in r.patches.items():
        if a not in by_site:
            # reached only through the IDT: scanned at delivery, not from the entry
            assert a not in {i for pl in plan for i in pl.covers}
            continue
        assert by_site[a].covers == tuple(i.addr for i in p.covered)


def test_plan_marks_covered_and_trapping_sites():
    # cli runs natively (the guest's IF is the real IF): a jump may carry it
    cfg = api.scan(api.code_image("pushfd\ncli\npop eax\nnop\nnop\nlgdt [0x100400]\nhlt\n"))
    plan = {p.name: p for p in api.plan_patches(cfg)}
    assert plan["pushfd"].action == "jump" and plan["pushfd"].covers == (0x100000, 0x100001, 0x100002,
                                                                          0x100003, 0x100004)
    assert plan["cli"].action == "covered" and plan["cli"].by == 0x100000
    assert plan["lgdt"].action == "trap" and plan["hlt"].action == "trap"
    # Without room for the jump before lgdt (which needs the VMM) pushfd falls
    # back to an int3 patch, and cli needs nothing.
    tight = {p.name: p for p in api.plan_patches(api.scan(api.code_image("pushfd\ncli\nlgdt [0x100400]\n")))}
    assert (tight["cli"].action, tight["cli"].refused) == ("none", None)
    assert (tight["pushfd"].action, tight["pushfd"].refused) == ("int3", "needs-vmm")


def test_bt_views_and_stub_listing():
    r = api.run("demo:fnptr", "bt", mem_mib=4)
    assert r.guards and set(r.guards) <= set(r.cfg.unresolved_sites())
    site = next(a for a, p in r.patches.items() if p.kind == "jump")
    rows = r.stub_listing(site)
    assert rows[0]["translates"] == hex(site)
    assert rows[-1]["insn"].startswith("jmp") or any(row["exit"] for row in rows)
    table = api.site_table(r.cfg, r.patches, r.guards)
    assert {row["patch"] for row in table} >= {"jump", "guard"}


def test_cfg_helpers_partition_and_zoom():
    cfg = api.scan("demo:probe-flags", mem_mib=4)
    funcs = api.functions(cfg)
    blocks = [b for bs in funcs.values() for b in bs]
    assert sorted(blocks) == cfg.blocks()                      # every block exactly once
    entry = min(cfg.entries)
    assert api.function_of(cfg, entry) == entry
    page = api.cfg_subgraph(cfg, page=entry)
    assert all(entry <= n < entry + 0x1000 for n in page if n != api.UNRESOLVED)
    one = api.cfg_subgraph(cfg, function=entry)
    assert set(one) == set(funcs[entry])
    pos = api.cfg_layout(cfg.graph, cfg)
    assert set(pos) >= set(cfg.blocks()) and len(set(pos.values())) == len(pos)


def test_bad_input_is_one_line():
    with pytest.raises(BadInput, match="unknown mode"):
        api.run("demo:hello", "fast")
    with pytest.raises(BadInput, match="sample_every"):
        api.run("demo:hello", "emulate", sample_every=0)
    with pytest.raises(BadInput, match="mode='bt'"):
        api.run("demo:hello", "emulate", mem_mib=4).cfg
    with pytest.raises(BadInput, match="does not assemble"):
        api.code_image("not an instruction")
    with pytest.raises(BadInput, match="not inside a scanned block"):
        api.function_of(api.scan("demo:hello", mem_mib=4), 0x5000)


# -- typed machine options (MachineConfig fields, no free-form dict) -----------------
def test_unknown_option_is_one_line_bad_input():
    for call in (lambda: api.run("demo:hello", "bt", extra={"eager_privileged_patches": False}),
                 lambda: api.make_vm("demo:hello", mem_mb=4),
                 lambda: api.fidelity("demo:hello", "bt", budget=10),
                 lambda: api.compare_modes(["demo:hello"], mem=4)):
        with pytest.raises(BadInput, match=r"^unknown option '\w+' \(choose from .*mem_mib") as e:
            call()
        assert "\n" not in str(e.value)


def test_eager_privileged_patches_reaches_bt_mode():
    # No row is patch-privileged since cli/sti run natively (docs/fidelity.md,
    # "IF in the real EFLAGS"): the switch reaches the VM and changes nothing,
    # and probe-flags' cli/sti never trap.
    eager = api.run("demo:probe-flags", "bt", mem_mib=4)
    lazy = api.run("demo:probe-flags", "bt", mem_mib=4, eager_privileged_patches=False)
    assert eager.serial == lazy.serial and eager.exit_status == lazy.exit_status == 0
    assert eager.csam_stats["faults_before_patching"] == lazy.csam_stats["faults_before_patching"] == 0
    assert eager.counters["faults_emulated"] == lazy.counters["faults_emulated"]
    assert "cli" not in eager.counters["faults_emulated"] and "sti" not in eager.counters["faults_emulated"]
    assert lazy.vm.config.eager_privileged_patches is False


def test_hide_patches_reaches_bt_mode():
    # Every bt demo with a patch gets read hooks on its page; "written-pages" none
    # (no demo but smc writes code; smc's page then gets them too).
    every = api.run("demo:probe-flags", "bt", mem_mib=4)
    written = api.run("demo:probe-flags", "bt", mem_mib=4, hide_patches="written-pages")
    assert every.serial == written.serial and written.vm.config.hide_patches == "written-pages"
    assert every.csam_stats["read_hidden_pages"] >= 1 and written.csam_stats["read_hidden_pages"] == 0
    with pytest.raises(BadInput, match="hide_patches"):
        api.make_vm("demo:hello", "bt", mem_mib=4, hide_patches="some-pages")


def test_serial_input_interval_paces_scripted_input():
    from runtime.devices import serial_input_interval
    vm = api.make_vm("demo:hello", mem_mib=4, serial_input=b"ab", serial_input_interval=77)
    assert vm.devices["uart"].script.interval == 77
    default = api.make_vm("demo:hello", mem_mib=4, cpu_mhz=50, serial_input=b"ab")
    assert default.devices["uart"].script.interval == serial_input_interval(default.config) == 50_000
    for bad in (0, -5, 1.5, True):
        with pytest.raises(BadInput, match="serial_input_interval"):
            api.make_vm("demo:hello", mem_mib=4, serial_input=b"ab", serial_input_interval=bad)
    with pytest.raises(BadInput, match="eager_privileged_patches"):
        api.make_vm("demo:hello", "bt", mem_mib=4, eager_privileged_patches="no")
