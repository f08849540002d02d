"""benchmarks/code_writes.py: its guest runs under bt with one code-write hook."""
import pytest

from scripts import load_script


def test_rows_report_one_code_write_hook_whatever_the_code_pages():
    cw = load_script("code_writes")
    rows = cw.bench([1, 40], stores=2000, repeat=1)
    assert [(r["stores_to"]) for r in rows] == ["outside", "outside", "inside"]
    assert [r["code_pages"] >= p for r, p in zip(rows, (1, 40, 40))] == [True] * 3
    assert all(r["code_write_hooks"] == 1 and r["write_hook_spans"] >= 1 for r in rows)


def test_bad_arguments_are_usage_errors(capsys):
    cw = load_script("code_writes")
    for argv in (["--pages", "0"], ["--pages", "x"], ["--stores", "-1"], ["--pages", "6000"]):
        with pytest.raises(SystemExit) as e:
            cw.main(argv)
        assert e.value.code == 2
