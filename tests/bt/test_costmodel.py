"""The cost model: prices counted events with documented, overridable parameters."""
from __future__ import annotations

import pytest

from bt import costmodel
from bt.costmodel import CostParams, cycles, vtx_exits
from bt.errors import BadInput

TRAP = {"exits": 10, "io_exits": 4, "cpuid_exits": 1, "interrupts_injected": {"0x20": 2},
        "faults_emulated": {"cli": 3, "hlt": 1, "mov": 2, "rdmsr": 1, "popfd": 5}}


def test_vtx_counts_only_what_vtx_exits_on():
    ev = vtx_exits(TRAP)
    assert ev == {"cpuid": 1, "io": 4, "interrupts": 2, "hlt": 1, "cr": 2, "msr": 1}
    assert "cli" not in ev and "popfd" not in ev


def test_cycles_per_mode():
    p = CostParams()
    assert cycles("emulate", 1000, TRAP, p) == 1000 * 30 + 4 * 214
    assert cycles("trap", 1000, TRAP, p) == 1000 + 10 * 3223 + 4 * 214
    assert cycles("bt", 1000, TRAP, p) == cycles("trap", 1000, TRAP, p)
    assert cycles("vtx", 1000, TRAP, p) == 1000 + 11 * 2000 + 4 * 214


def test_overrides():
    p = CostParams().with_overrides("vmexit=15826, software_exit=100")
    assert p.vmexit == 15826 and p.software_exit == 100 and p.native_cpi == 1.0
    assert cycles("vtx", 0, {"cpuid_exits": 1}, p) == 15826


@pytest.mark.parametrize("bad", ["nosuch=1", "vmexit", "vmexit=abc", "vmexit=-1"])
def test_bad_overrides(bad):
    with pytest.raises(BadInput):
        CostParams().with_overrides(bad)


def test_unknown_mode():
    with pytest.raises(BadInput):
        cycles("kvm", 1, {})


def test_every_parameter_is_documented_with_a_source():
    # Only CostParams' docstring counts: a name elsewhere in the module is no documentation.
    assert costmodel.undocumented(costmodel.CostParams.__doc__, costmodel.CostParams()) == []
    docs = costmodel.documented_params(costmodel.CostParams.__doc__)
    assert {name for name, _ in costmodel.describe_params()} == set(docs)
    assert all(source for _, source in docs.values())


def test_a_parameter_without_its_line_fails_the_check():
    doc = costmodel.CostParams.__doc__
    line = next(ln for ln in doc.splitlines() if ln.strip().startswith("vmexit ="))
    assert costmodel.undocumented(doc.replace(line, ""), costmodel.CostParams()) == [
        "vmexit: no 'name = default: what (source: ...)' line"]
    no_source = line[:line.index("(source:")]
    assert costmodel.undocumented(doc.replace(line, no_source), costmodel.CostParams())
    empty_source = line[:line.index("(source:")] + "(source: )"
    assert costmodel.undocumented(doc.replace(line, empty_source), costmodel.CostParams())


def test_a_stale_documented_default_fails_the_check():
    params = costmodel.CostParams(vmexit=1500.0)
    assert costmodel.undocumented(costmodel.CostParams.__doc__, params) == [
        "vmexit: documented default 2000.0 is not 1500.0"]
