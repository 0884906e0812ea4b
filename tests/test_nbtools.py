"""bgtutorial.nbtools: executed notebooks carry source hashes; stale and unclean outputs are caught."""
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from bgtutorial import nbtools


def _nb(*sources):
    return new_notebook(cells=[new_markdown_cell("# t")] + [new_code_cell(s) for s in sources])


def test_execute_records_hashes_png_figures_and_a_clean_output(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")            # as under `make test`: execution must undo it
    monkeypatch.setenv("BGT_SMOKE", "1")
    path = tmp_path / "t.ipynb"
    nbformat.write(_nb("import os\nprint(os.environ.get('BGT_SMOKE'), os.environ.get('TQDM_DISABLE'))",
                       "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])"), path)
    assert nbtools.execute_notebook(path, timeout=120) == []
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].outputs[0]["text"].split() == ["None", "1"]          # full mode, no progress bars
    assert any("image/png" in o.get("data", {}) for o in code[1].outputs)
    for c in code:
        assert c.metadata["bgtutorial"]["source_sha256"] == nbtools.source_hash(c.source)
    assert nbtools.stale_cells(path) == []
    assert nbtools.has_outputs(path)
    import os
    assert os.environ["MPLBACKEND"] == "Agg" and os.environ["BGT_SMOKE"] == "1"   # restored


def test_an_edited_cell_is_stale_and_named(tmp_path):
    nb = _nb("x = 1\nx", "y = 2\ny")
    for c in nb.cells[1:]:
        c.outputs = [new_output("execute_result", {"text/plain": "1"}, execution_count=1)]
        c.metadata["bgtutorial"] = {"source_sha256": nbtools.source_hash(c.source)}
    assert nbtools.stale_cells(nb) == []
    nb.cells[2].source = "y = 3\ny"
    problems = nbtools.stale_cells(nb)
    assert len(problems) == 1 and "cell 2" in problems[0] and "make notebooks" in problems[0]
    del nb.cells[1].metadata["bgtutorial"]
    assert len(nbtools.stale_cells(nb)) == 2                     # outputs without a hash are stale too


def test_a_notebook_without_outputs_is_stale(tmp_path):
    assert "no outputs" in nbtools.stale_cells(_nb("x = 1"))[0]


@pytest.mark.parametrize("output,what", [
    (new_output("stream", name="stderr", text="UserWarning: careful\n"), "stderr"),
    (new_output("stream", name="stdout", text="IProgress not found. Please update jupyter\n"), "warning"),
    (new_output("error", ename="ValueError", evalue="bad", traceback=[]), "error"),
    (new_output("execute_result", {"text/plain": "<Figure size 640x480 with 1 Axes>"}, execution_count=1), "as text"),
    (new_output("execute_result", {"text/plain": "[]"}, execution_count=1), "stray"),
    (new_output("display_data", {"image/svg+xml": "<svg/>", "text/plain": "fig"}), "PNG only"),
])
def test_unclean_outputs_are_reported(output, what):
    nb = _nb("pass")
    nb.cells[1].outputs = [output]
    problems = nbtools.output_problems(nb)
    assert len(problems) == 1 and what in problems[0] and "cell 1" in problems[0]


def test_clean_outputs_pass():
    nb = _nb("pass")
    nb.cells[1].outputs = [new_output("stream", name="stdout", text="R@1 0.40\n"),
                           new_output("display_data", {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 1x1>"})]
    assert nbtools.output_problems(nb) == []


def test_strip_removes_outputs_and_hashes(tmp_path):
    nb = _nb("x = 1")
    nb.cells[1].outputs = [new_output("stream", name="stdout", text="1\n")]
    nb.cells[1].metadata["bgtutorial"] = {"source_sha256": "0"}
    path = tmp_path / "s.ipynb"
    nbformat.write(nb, path)
    assert nbtools.strip_notebook(path) and not nbtools.has_outputs(path)
    assert "bgtutorial" not in nbformat.read(path, as_version=4).cells[1].metadata
    assert not nbtools.strip_notebook(path)


def test_cli_refuses_unknown_commands_and_missing_files(capsys):
    assert nbtools._main(["run", "x.ipynb"]) == 2
    assert nbtools._main(["check", "no/such.ipynb"]) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_about_names_version_device_and_date():
    import datetime

    import torch

    import bgtutorial
    from bgtutorial.utils import about

    line = about(torch.device("cpu"))
    assert f"bgtutorial {bgtutorial.__version__}" in line and f"torch {torch.__version__}" in line
    assert "cpu: CPU" in line and datetime.date.today().isoformat() in line


def test_export_figure_writes_the_tagged_cells_png(tmp_path):
    import base64

    png = base64.b64encode(b"\x89PNG fake").decode()
    nb = _nb("pass", "plot()")
    nb.cells[2].metadata["tags"] = ["readme-figure"]
    nb.cells[2].outputs = [new_output("display_data", {"image/png": png, "text/plain": "<Figure>"})]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    out = nbtools.export_figure(path, "readme-figure", tmp_path / "f" / "x.png")
    assert out.read_bytes() == b"\x89PNG fake"
    with pytest.raises(ValueError, match="no code cell tagged"):
        nbtools.export_figure(path, "other", tmp_path / "y.png")
    with pytest.raises(ValueError, match="1 PNG"):
        nbtools.export_figure(path, "readme-figure", tmp_path / "y.png", index=1)


def test_cli_says_which_files_are_not_notebooks_and_checks_the_others(tmp_path, capsys):
    """Issue 23: a non-notebook or bad JSON gave a traceback and exit 1 (the code of "stale found"), and the
    files after it went unchecked."""
    good = tmp_path / "good.ipynb"
    nb = _nb("print(1)")
    nb.cells[1].outputs = [new_output("stream", name="stdout", text="1\n")]
    nb.cells[1].metadata[nbtools.META_KEY] = {"source_sha256": nbtools.source_hash(nb.cells[1].source)}
    nbformat.write(nb, good)
    files = {"text.ipynb": b"hello\n", "list.ipynb": b"[1, 2]\n", "bytes.ipynb": b"\xff\xfe{", "half.ipynb": b'{"cells": ['}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / name) for name in files] + [str(good)]
    for cmd in ("check", "strip"):
        assert nbtools._main([cmd, *paths]) == 2
        out, err = capsys.readouterr()
        assert err.count("\n") == len(files) and all(line.startswith("error: ") and "pass .ipynb files only" in line
                                                     for line in err.splitlines())
        assert str(good) in out                                      # the good notebook was still handled


@pytest.mark.parametrize("value,smoke", [("1", True), ("true", True), ("YES", True), (" on ", True), ("0", False),
                                         ("false", False), ("off", False), ("", False), (None, False)])
def test_smoke_mode_is_the_one_parser_of_bgt_smoke(monkeypatch, value, smoke):
    from bgtutorial.utils import smoke_mode

    if value is None:
        monkeypatch.delenv("BGT_SMOKE", raising=False)
    else:
        monkeypatch.setenv("BGT_SMOKE", value)
    assert smoke_mode() is smoke


def test_smoke_mode_refuses_what_it_cannot_read(monkeypatch):
    from bgtutorial.utils import smoke_mode

    monkeypatch.setenv("BGT_SMOKE", "smoke")
    with pytest.raises(ValueError, match=r"BGT_SMOKE='smoke' is neither on .* set BGT_SMOKE=1"):
        smoke_mode()


def test_execution_records_its_time_and_fills_the_marks(tmp_path, monkeypatch):
    """The notebook's "Time" line and the README's table state the one measured time, from the record."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    (tmp_path / "notebooks").mkdir()
    path = tmp_path / "notebooks" / "07_t.ipynb"
    nb = _nb("import time\ntime.sleep(0.2)\nprint(\"slept\")")
    nb.cells[0].source = "# t\n\n**Time.** <!-- time:07_t -->not yet measured<!-- /time --> to run."
    nbformat.write(nb, path)
    readme = tmp_path / "README.md"
    readme.write_text("| 07 | <!-- time:07_t -->?<!-- /time --> |\n| 08 | <!-- time:08_x -->3 s<!-- /time --> |\n")
    assert nbtools.time_problems(path, readme) != []                    # marks but no record yet
    assert nbtools._main(["execute", str(path)]) == 0
    record = nbtools.execution_record(path)
    assert record["seconds"] >= 0.2 and record["machine"] and record["date"]
    shown = nbtools.format_record(record)
    assert f"<!-- time:07_t -->{shown}<!-- /time -->" in nbformat.read(path, as_version=4).cells[0].source
    text = readme.read_text()
    assert f"<!-- time:07_t -->{shown}<!-- /time -->" in text and "<!-- time:08_x -->3 s<!-- /time -->" in text
    assert nbtools.time_problems(path, readme) == [] and nbtools._main(["check", str(path)]) == 0
    readme.write_text(text.replace(shown, "1 s on a hand-edited claim, 2026-01-01"))
    problems = nbtools.time_problems(path, readme)
    assert len(problems) == 1 and "README.md" in problems[0] and "make notebooks" in problems[0]
    assert nbtools._main(["check", str(path)]) == 1


def test_format_record_switches_to_minutes_past_90_seconds():
    base = {"machine": "2 CPU cores (x86_64)", "date": "2026-12-03"}
    assert nbtools.format_record({**base, "seconds": 45.4}) == "45 s on 2 CPU cores (x86_64), 2026-12-03"
    assert nbtools.format_record({**base, "seconds": 143.0}).startswith("2.4 min on ")
