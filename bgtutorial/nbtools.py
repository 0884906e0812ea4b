"""Notebook housekeeping: ``python -m bgtutorial.nbtools strip notebooks/*.ipynb`` removes outputs.

Notebooks are committed without outputs (CONVENTIONS.md); tests check that they stay so.
"""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["strip_notebook", "has_outputs"]


def strip_notebook(path: str | Path) -> bool:
    """Remove outputs and execution counts in place; return True when the file changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            if cell.outputs or cell.execution_count is not None:
                changed = True
            cell.outputs, cell.execution_count = [], None
    if changed:
        nbformat.write(nb, path)
    return changed


def has_outputs(path: str | Path) -> bool:
    """True when any code cell of the notebook carries outputs."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return any(c.cell_type == "code" and c.outputs for c in nb.cells)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "strip":
        sys.exit("usage: python -m bgtutorial.nbtools strip NOTEBOOK.ipynb ...")
    for p in sys.argv[2:]:
        print(("stripped " if strip_notebook(p) else "clean    ") + p)
