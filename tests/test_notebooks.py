"""Every notebook runs top to bottom (nbclient, kernel python3) and writes its figures.

The notebooks save PNGs into $BT_NOTEBOOK_OUT; each test points that at a fresh
directory and checks the figures the notebook promises exist and are non-empty
PNG files, so a notebook that stops drawing (or stops running) fails here.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

FIGURES = {
    "01-patch-cfg.ipynb": ["01-cfg-probe-flags.png", "01-function-probe-flags.png",
                           "01-page-fnptr.png", "01-bad-blocks.png"],
    "02-fault-rates.ipynb": ["02-exits-per-million.png", "02-exit-kinds.png",
                             "02-timeline-timer.png", "02-timeline-hotflags.png",
                             "02-exit-rate.png", "02-modelled-cost.png"],
    "03-fidelity.ipynb": ["03-fidelity.png"],
}
# Drawn only where the Linux guest is fetched (CI fetches it); without it the
# notebooks' Linux sections say so and draw nothing (tested below).
LINUX_FIGURES = {
    "01-patch-cfg.ipynb": ["01-linux-patch-sites.png"],
    "02-fault-rates.ipynb": ["02-linux-exits-over-time.png"],
}


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_outputs_are_stripped(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_draws(name, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("BT_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()          # raises CellExecutionError naming the failing cell
    from bt.images.linux_guest import linux_available
    for fig in FIGURES[name] + (LINUX_FIGURES.get(name, []) if linux_available() else []):
        path = out / fig
        assert path.is_file(), f"{name} did not save {fig}"
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), f"{fig} is not a drawn PNG"


@pytest.mark.parametrize("name", sorted(LINUX_FIGURES))
def test_linux_sections_say_so_without_the_images(name, tmp_path, monkeypatch):
    """A fresh machine: the Linux cells print that the guest is not fetched and
    run on; only the Linux section's cells are run (the rest is tested above)."""
    monkeypatch.setenv("BT_IMAGE_DIR", str(tmp_path / "no-images"))
    monkeypatch.setenv("BT_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                 and c.source.startswith("## ") and "Linux" in c.source.splitlines()[0])
    setup = next(c for c in nb.cells if c.cell_type == "code")      # imports, OUT, save
    nb.cells = [setup] + nb.cells[first:]
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    said = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "not fetched here: run `bt-images fetch linux`" in said
    assert not list((tmp_path / "out").glob("*linux*"))
