"""bt/docgen.py: the --doc/--check command shared by the generated documents."""
from bt.docgen import doc_command


def _render(old):
    if old is not None and "MARK" not in old:
        raise ValueError("no MARK in the file")
    return "MARK generated\n"


def test_check_write_and_stale(tmp_path, capsys):
    path = tmp_path / "d.md"
    kw = dict(module="m", default_path=str(path), render=_render, what="the table")
    assert doc_command(["--check"], **kw) == 1                  # missing: stale
    assert doc_command(["--doc"], **kw) == 0 and path.read_text() == "MARK generated\n"
    assert doc_command(["--check"], **kw) == 0
    path.write_text("MARK edited by hand\n")
    assert doc_command(["--check"], **kw) == 1
    assert "is stale: run `python -m m --doc`" in capsys.readouterr().err


def test_unusable_file_is_one_line_and_status_2(tmp_path, capsys):
    path = tmp_path / "d.md"
    path.write_text("no marker here\n")
    assert doc_command(["--check"], module="m", default_path=str(path), render=_render,
                       what="the table") == 2
    assert capsys.readouterr().err == "python -m m: error: no MARK in the file\n"


def test_no_flag_prints_the_preview(tmp_path, capsys):
    assert doc_command([], module="m", default_path=str(tmp_path / "x"), render=_render,
                       what="t", show=lambda: "preview") == 0
    assert capsys.readouterr().out == "preview\n"
