"""benchmarks/runtime_bench.py: its guests, its measurements' bookkeeping, its CLI.

Behaviour only: nothing here asserts a time.  Small sizes keep the fast tests
to a few seconds; the demo comparison is behind the `slow` marker.
"""
from __future__ import annotations

import json
import subprocess
import sys

import capstone
import pytest

from scripts import load_script, script_path

SCRIPT = script_path("runtime_bench")


def _load():
    return load_script("runtime_bench")


rb = _load()
_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def _mnemonics(code: bytes, addr: int) -> list[tuple[str, str]]:
    return [(m, o) for _, _, m, o in _CS.disasm_lite(code, addr)]


def test_trap_loop_encodes_what_it_says():
    # Keystone output checked back with capstone: the loop body is exactly the
    # trapping instruction, dec, jnz back to it; then status 0 to port 0xf4.
    for key, (asm_text, _) in rb.TRAP_INSNS.items():
        code = rb.assemble(rb.trap_loop_source(asm_text, 7))
        insns = _mnemonics(code, rb.LOAD)
        names = [m for m, _ in insns]
        assert names == ["mov", {"clts": "clts", "mov-cr0": "mov", "out": "out"}[key],
                         "dec", "jne", "mov", "out", "hlt"], (key, insns)
        assert insns[0] == ("mov", "ecx, 7")
        assert insns[3][1] == hex(rb.LOAD + 5)         # jnz back to the trapping insn
        assert insns[5] == ("out", "0xf4, al")


def test_cpu_loop_stores_off_the_code_page():
    work, stop = rb.cpu_loop_source(3)
    code = rb.assemble(work + "\n" + stop)
    insns = _mnemonics(code, rb.LOAD)
    stores = [o for m, o in insns if m == "mov" and o.startswith("dword ptr [")]
    assert stores == [f"dword ptr [edx + {rb.DATA:#x}], eax"]
    assert rb.DATA // 0x1000 != (rb.LOAD + len(code)) // 0x1000
    # setup + 8-instruction body + 2 after the loop, before `out`
    assert len(_mnemonics(rb.assemble(work), rb.LOAD)) == rb.CPU_LOOP_SETUP + rb.CPU_LOOP_BODY


def test_exit_cost_counts_every_trap_and_is_deterministic():
    args = rb.parser().parse_args(["exit-cost", "--exits", "300", "--repeat", "2", "--insn", "clts,out"])
    d = rb.bench_exit_cost(args)
    assert [r["insn"] for r in d["results"]] == ["clts", "out"]
    for r in d["results"]:
        assert r["exits"] == 300
        assert r["deterministic"] is True
        assert r["us_per_exit_vmm"] > 0
        assert len(r["samples_us_wall"]) == 2
    b = d["breakdown"]["clts"]
    assert b["exits"] == 300
    assert any(k.startswith("emulation routine 'clts'") for k in b["parts_us"])
    assert any(k.startswith("quirks.take_fault") for k in b["parts_us"])
    # A difference of two wall times (int3 loop minus nop loop): its sign is at
    # the mercy of a loaded machine, so only its presence is checked.
    assert isinstance(d["bare_engine_floor"]["fault_hook_us"], float)


def test_cpu_ratio_runs_the_same_code_as_the_bare_engine():
    args = rb.parser().parse_args(["cpu-ratio", "--iterations", "2000", "--repeat", "2"])
    d = rb.bench_cpu_ratio(args)
    configs = [r["config"] for r in d["results"]]
    assert configs == ["raw", "raw+count", "emulate", "trap", "bt"]
    for r in d["results"][2:]:
        assert r["deterministic"] is True
        assert r["retired"] == d["instructions"] + 1       # + the final out
        assert len(r["ratios"]) == 2
    # the checksum the bare engine computed, recomputed in Python
    eax, ebx = 0, 0x9E3779B9
    for ecx in range(2000, 0, -1):
        eax = (eax + ebx) & 0xFFFFFFFF
        eax = ((eax << 5) | (eax >> 27)) & 0xFFFFFFFF
        eax ^= ecx
    assert d["final_ebx"] == eax


def test_fingerprint_sees_a_counter_difference():
    img = rb.raw_image("t", rb.assemble(rb.trap_loop_source("cli", 3)))
    a = rb.run_vm(img, "trap")
    b = rb.run_vm(img, "trap")
    assert rb.same(a, b)
    b.counters["exits"] += 1
    assert not rb.same(a, b)


def test_bad_arguments_give_one_line_errors():
    for argv, text in ((["cpu-ratio", "--modes", "fast"], "unknown mode fast"),
                       (["exit-cost", "--insn", "hlt"], "unknown instruction hlt"),
                       (["exit-cost", "--exits", "0"], "must be at least 1")):
        p = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True)
        assert p.returncode == 2
        assert text in p.stderr
        assert "Traceback" not in p.stderr


def test_json_output_parses():
    p = subprocess.run([sys.executable, str(SCRIPT), "exit-cost", "--exits", "50", "--repeat", "1",
                        "--insn", "mov-cr0", "--json"], capture_output=True, text=True, check=True)
    d = json.loads(p.stdout)
    assert d["benchmark"] == "exit-cost" and d["results"][0]["exits"] == 50


@pytest.mark.slow
def test_bt_vs_trap_hotflags():
    d = rb.bench_bt_vs_trap(rb.parser().parse_args(["bt-vs-trap", "--demos", "hotflags"]))
    (dm,) = d["demos"]
    modes = dm["modes"]
    assert all(m["deterministic"] and m["output_matches_emulate"] for m in modes.values())
    # cli/sti run natively (the guest's IF is the real IF): trap's loop exits
    # only for its serial output, as bt's (docs/fidelity.md, "IF in the real EFLAGS")
    assert modes["trap"]["virtualization_exits"] == 0
    assert dm["bt_output_equals_trap"]
