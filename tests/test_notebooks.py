"""Every notebook executes headless under SMOKE=1 (loops shrunk to seconds, torch threads 1), writes
its figures as PNG to $NOTEBOOK_OUT, shows them in its outputs, and prints no warning."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: The figures each notebook must write (stem of the PNG under $NOTEBOOK_OUT).
FIGURES = {
    "01_exact_posteriors": ["01_last_jump_posteriors"],
    "02_local_error_bounds": ["02_local_error_bounds"],
    "03_global_error": ["03_global_error_vs_steps", "03_grid_convergence", "03_densities_4_steps"],
    "04_smd_vs_ddpm": ["04_two_step_samples"],
}


def test_every_notebook_has_its_figure_list():
    assert sorted(FIGURES) == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")     # figures must reach disk and outputs even so
    monkeypatch.setenv("NOTEBOOK_OUT", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit notebooks without outputs"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "set_num_threads(1)" in first.source and "SMOKE" in first.source
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert os.environ["SMOKE"] == "1"
    for stem in FIGURES[path.stem]:
        png = tmp_path / f"{stem}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{stem}.png missing"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(FIGURES[path.stem])
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "Warning" not in stderr, stderr
    assert not any(o.output_type == "error" for o in outputs)
