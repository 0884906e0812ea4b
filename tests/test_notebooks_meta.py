"""Notebook rules from CONVENTIONS.md that nbval itself cannot check."""
import re
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
    tags = [c.metadata.get("tags", []) for c in code]
    colab = code[0]
    assert "google.colab" in colab.source and "nbval-skip" in tags[0], "first code cell: the Colab install"
    params = [c for c, t in zip(code, tags) if "parameters" in t]
    assert len(params) == 1 and "SMOKE = smoke_mode()" in params[0].source, \
        "the parameters cell reads BGT_SMOKE through bgtutorial.utils.smoke_mode, the package's one parser"
    assert 'os.environ.get("BGT_SMOKE"' not in "".join(c.source for c in code), "a second BGT_SMOKE parser"
    assert nb.cells[0].cell_type == "markdown" and "teaches" in nb.cells[0].source
    assert "Summary" in nb.cells[-1].source and "Exercises" in nb.cells[-1].source
    assert "import bgtutorial" in "".join(c.source for c in code)
    assert "tqdm.notebook" not in "".join(c.source for c in code)


def _repository():
    import tomllib

    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    return tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_uses_the_one_repository_address(path):
    """The install cell and the badge use pyproject's [project.urls] Repository; runs go to Drive on Colab."""
    nb = nbformat.read(path, as_version=4)
    repo = _repository()
    slug = repo.removeprefix("https://github.com/")
    badge = f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}"
    assert badge in nb.cells[0].source, f"{path.name}: the first cell needs the Open-in-Colab badge {badge}"
    colab = next(c for c in nb.cells if c.cell_type == "code")
    urls = set(re.findall(r'BGT_REPO = "([^"]+)"', colab.source))
    assert urls == {repo}, f"{path.name}: the install cell must use {repo}, found {urls}"
    assert 'os.environ["BGT_RUNS"]' in colab.source and "MyDrive" in colab.source
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert 'RUNS = os.environ.get("BGT_RUNS", "runs")' in params.source or "RUNS" not in params.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_output_says_where_it_ran(path):
    """The first cell that runs outside Colab and prints anything prints bgtutorial.utils.about()."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and "nbval-skip" not in c.metadata.get("tags", [])]
    first_print = next(c for c in code if "print(" in c.source or "display(" in c.source).source
    assert "print(bgtutorial.utils.about(" in first_print and \
        first_print.index("print(") == first_print.index("print(bgtutorial.utils.about("), \
        f"{path.name}: the first printing cell must print bgtutorial.utils.about() before anything else"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_current_and_clean(path):
    """Notebooks are committed with the outputs of a full run (`make notebooks`): none stale, none unclean."""
    from bgtutorial.nbtools import has_outputs, output_problems, stale_cells

    assert has_outputs(path), f"{path.name} has no outputs: run `make notebooks` and commit them"
    problems = stale_cells(path) + output_problems(path)
    assert not problems, "\n".join(problems)
    assert path.stat().st_size < 2.5 * 2**20, f"{path.name} is {path.stat().st_size / 2**20:.1f} MiB; keep it under ~2 MB"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_time_lines_state_the_measured_execution_time(path):
    """The notebook's "Time" line and the README's table show the time `make notebooks` measured, not prose."""
    from bgtutorial import nbtools

    readme = path.parents[1] / "README.md"
    nb = nbformat.read(path, as_version=4)
    assert [m for m, _ in nbtools.time_marks(nb.cells[0].source)] == [path.stem], "cell 0: one time mark, its own"
    assert [m for m, _ in nbtools.time_marks(readme.read_text())].count(path.stem) == 1, "README: one time mark"
    assert nbtools.time_problems(path, readme) == []
