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


#: the layout's limits (issue 22): a file a reader can hold in mind, a function that fits on a screen
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _package_files() -> list[Path]:
    return sorted((ROOT / "bgtutorial").rglob("*.py"))


def test_package_files_and_functions_stay_small():
    """No file of the package over 500 lines, no function (or method) over 80, decorators included."""
    import ast

    long_files, long_functions = [], []
    for path in _package_files():
        source = path.read_text(encoding="utf-8")
        name = str(path.relative_to(ROOT))
        if len(source.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{name} ({len(source.splitlines())} lines)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}:{node.lineno} {node.name} ({node.end_lineno - start + 1} lines)")
    assert not long_files, f"files over {MAX_FILE_LINES} lines (move code into a module of its own): {long_files}"
    assert not long_functions, (f"functions over {MAX_FUNCTION_LINES} lines (name their steps as helper "
                                f"functions): {long_functions}")


def test_package_modules_import_without_cycles():
    """The modules' top-level imports form no cycle (lazy imports inside functions and the
    ``if __name__ == "__main__":`` blocks are left out: they run after every module is loaded)."""
    import ast

    modules = {}
    for path in _package_files():
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        imported = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                imported |= {t for t in [target] + [f"{target}.{a.name}" for a in node.names] if t in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name in modules}
        graph[name] = imported - {name}

    def cycle_from(start: str, path: list[str], done: set[str]) -> list[str] | None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == start:
                return path + [nxt]
            if nxt not in path and nxt not in done:
                found = cycle_from(start, path + [nxt], done)
                if found:
                    return found
        return None

    done: set[str] = set()
    for name in sorted(graph):
        found = cycle_from(name, [name], done)
        assert found is None, f"import cycle: {' -> '.join(found)}"
        done.add(name)
