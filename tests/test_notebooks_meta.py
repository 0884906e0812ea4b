"""Notebook rules from CONVENTIONS.md that nbval itself cannot check."""
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_ordered_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["00_data_and_task.ipynb", "01_baseline.ipynb", "02_batchformer.ipynb",
                         "03_batch_graph.ipynb", "04_bgformer.ipynb", "05_experiments.ipynb"]
    assert all(n[:2].isdigit() and n[2] == "_" for n in names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_rules(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs: make strip"
    tags = [c.metadata.get("tags", []) for c in code]
    colab = code[0]
    assert "google.colab" in colab.source and "nbval-skip" in tags[0], "first code cell: the Colab install"
    params = [c for c, t in zip(code, tags) if "parameters" in t]
    assert len(params) == 1 and "BGT_SMOKE" in params[0].source
    assert nb.cells[0].cell_type == "markdown" and "teaches" in nb.cells[0].source
    assert "Summary" in nb.cells[-1].source and "Exercises" in nb.cells[-1].source
    assert "import bgtutorial" in "".join(c.source for c in code)
    assert "tqdm.notebook" not in "".join(c.source for c in code)
