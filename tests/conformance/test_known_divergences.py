"""Every recorded bt divergence (known_divergences.py) still diverges as recorded.

A failure here after a fix is good news: the cause is gone.  Move the program
into the regression tests and delete its entry (the assertion message says so).
"""
import pytest

from bt.api import code_image
from bt.fuzz.differential import run_pair, run_program
from bt.fuzz.generator import from_body
from known_divergences import KNOWN

WALL_LIMIT = 4.0   # enough for any of these programs; cause-1 loops would run forever


@pytest.mark.parametrize("entry", KNOWN, ids=[e["name"] for e in KNOWN])
def test_known_divergence_still_diverges_as_recorded(entry):
    if "raw" in entry:
        diff = run_pair(code_image(entry["raw"], name=entry["name"]), wall_limit=WALL_LIMIT)
    else:
        diff = run_program(from_body(entry["body"], entry.get("regs")), wall_limit=WALL_LIMIT)
    ends = tuple((o.exit_status, o.reason) for o in (diff.reference, diff.other))
    fixed = f"'{entry['name']}' (cause {entry['cause']}) no longer diverges as recorded: {diff.text()[:300]}"
    assert diff.kinds, fixed + " -- bt agrees now: move it into the regression tests and delete the entry"
    assert diff.guest_visible == entry["kinds"], fixed
    assert ends == entry["ends"], fixed
    assert entry["detail"] in diff.text(), fixed


def test_every_entry_is_well_formed():
    names = [e["name"] for e in KNOWN]
    assert len(names) == len(set(names))
    for e in KNOWN:
        assert ("body" in e) != ("raw" in e) and {"cause", "kinds", "ends", "detail"} <= set(e)
