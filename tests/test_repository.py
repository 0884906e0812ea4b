"""The repository stands alone: nothing in it points at files outside it."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [ROOT / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):      # not a git checkout (e.g. an sdist)
        skip = {".venv", ".git", "runs", "data", "__pycache__"}
        return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_no_file_refers_outside_the_repository():
    needle = "../" + "shared"          # split so this file does not match itself
    offenders = [str(p.relative_to(ROOT)) for p in _tracked_files()
                 if p.is_file() and p.suffix not in {".png", ".jpg", ".tgz"}
                 and needle in p.read_text(errors="ignore")]
    assert not offenders, f"these files point at {needle}, which readers don't have: {offenders}"


def test_method_and_recipe_pages_exist_and_are_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in ("docs/method.md", "docs/recipes.md"):
        assert (ROOT / page).is_file() and page in readme


def test_readme_images_exist():
    """Every image the README shows is in the repository (exported from the executed notebooks)."""
    import re
    from pathlib import Path

    root = Path(__file__).parents[1]
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (root / "README.md").read_text())
    assert images, "the README shows the notebooks' results"
    missing = [p for p in images if not p.startswith("http") and not (root / p).is_file()]
    assert not missing, f"README images missing: {missing} (python -m bgtutorial.nbtools figure ...)"


def test_make_lab_starts_as_root_too():
    """Issue 23: as root (Docker, cloud GPU boxes) Jupyter refuses to start without --allow-root."""
    import os
    import shutil

    import pytest

    if shutil.which("make") is None:
        pytest.skip("no make here")
    out = subprocess.run(["make", "-s", "-n", "-o", ".venv/.installed", "lab"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "-m jupyter lab notebooks" in out
    assert ("--allow-root" in out) == (os.geteuid() == 0)
