"""benchmarks/code_writes.py: its guest runs under bt with a few code-write hooks,
however many code pages."""
import pytest

from scripts import load_script


def test_rows_report_a_few_code_write_hooks_whatever_the_code_pages():
    cw = load_script("code_writes")
    rows = cw.bench([1, 40], stores=2000, repeat=1)
    assert [(r["stores_to"]) for r in rows] == ["outside", "outside", "inside"]
    assert [r["code_pages"] >= p for r, p in zip(rows, (1, 40, 40))] == [True] * 3
    # one range per run of code pages: the page skipped in the middle of the
    # 40-page chain splits it (runtime/hookspans.py: gaps down to one page)
    assert [r["code_write_hooks"] for r in rows] == [1, 2, 2]
    assert all(r["write_hook_spans"] >= 1 for r in rows)


def test_bad_arguments_are_usage_errors(capsys):
    cw = load_script("code_writes")
    for argv in (["--pages", "0"], ["--pages", "x"], ["--stores", "-1"], ["--pages", "6000"]):
        with pytest.raises(SystemExit) as e:
            cw.main(argv)
        assert e.value.code == 2
