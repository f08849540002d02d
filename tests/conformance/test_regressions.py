"""Every fixed fuzzer divergence (regressions.py) stays fixed: bt agrees with
emulate on everything the guest can see."""
import pytest

from bt.api import code_image
from bt.fuzz.differential import run_pair, run_program
from bt.fuzz.generator import from_body
from regressions import FIXED


@pytest.mark.parametrize("entry", FIXED, ids=[e["name"] for e in FIXED])
def test_fixed_divergence_stays_fixed(entry):
    if "raw" in entry:      # a whole program (known_divergences.py's `raw`)
        diff = run_pair(code_image(entry["raw"], name=entry["name"]), wall_limit=4.0)
    else:
        diff = run_program(from_body(entry["body"], entry.get("regs")), wall_limit=4.0)
    assert diff.guest_visible == (), f"'{entry['name']}' (cause {entry['cause']}) diverges again: {diff.text()[:300]}"
    if entry.get("exact"):      # virtual time: the retired counts must agree as well
        assert diff.kinds == (), f"'{entry['name']}' diverges again: {diff.text()[:300]}"


def test_fixed_entries_are_not_still_listed_as_known():
    from known_divergences import KNOWN
    assert not {e["name"] for e in FIXED} & {e["name"] for e in KNOWN}
