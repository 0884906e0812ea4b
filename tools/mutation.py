"""Mutation testing of the modules whose numbers readers trust (``make mutation``; not part of CI).

For each module, a work folder ``.mutation/<module>/`` gets a copy of the package and of the test files
that name the module, and a ``setup.cfg`` telling mutmut to mutate that one module and to select its
tests from those files only. mutmut then plants its mutants one at a time (one child process, lowest
CPU priority) and runs the covering tests against each. The summary (mutants, killed, survived,
score, wall time) is printed and written to ``.mutation/summary.json``; the surviving mutants' diffs
go to ``.mutation/<module>/survivors.txt``, to be classified in docs/testing.md.

    python tools/mutation.py                 # all six modules
    python tools/mutation.py metrics stats   # some of them
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
HELPERS = ["conftest.py", "naive.py", "reference_sgformer2.py"]    # imported by the test files below
TESTS = {                                                          # the test files that name each module
    "metrics": ["test_metrics.py", "test_pins_metrics.py", "test_metric_ties.py"],
    "stats": ["test_paired_summary.py", "test_pins_stats.py"],
    "graph": ["test_bgformer.py", "test_pins_graph.py"],
    "batchformer": ["test_batchformer.py", "test_pins_batchformer.py"],
    "bgformer": ["test_bgformer.py", "test_pins_bgformer.py"],
    "losses": ["test_losses_vit.py", "test_shared_head.py", "test_pins_hyperbolic.py", "test_pins_losses.py",
               "test_longtail_recognition.py"],
}


def _setup(module: str) -> Path:
    """The work folder of one module: package, its test files and mutmut's setup.cfg."""
    work = WORK / module
    shutil.rmtree(work, ignore_errors=True)
    (work / "tests").mkdir(parents=True)
    shutil.copytree(ROOT / "bgtutorial", work / "bgtutorial", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", work)
    for name in HELPERS + TESTS[module]:
        shutil.copy(ROOT / "tests" / name, work / "tests" / name)
    tests = "\n".join(f"    tests/{name}" for name in TESTS[module])
    (work / "setup.cfg").write_text(
        "[mutmut]\nsource_paths = bgtutorial\n"
        f"only_mutate = bgtutorial/{module}.py\n"
        f"pytest_add_cli_args_test_selection =\n{tests}\n"
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n")
    return work


def _mutmut(work: Path, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "BGT_SMOKE": "1", "TQDM_DISABLE": "1",
           "MPLBACKEND": "Agg"}
    cmd = ["nice", "-n", "19", sys.executable, "-m", "mutmut", *args]
    return subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True, text=True).stdout


def mutate(module: str) -> dict:
    """Run mutmut over one module; its counts, score and wall time."""
    work = _setup(module)
    start = time.time()
    _mutmut(work, "run", "--max-children", "1")
    seconds = time.time() - start
    _mutmut(work, "export-cicd-stats")
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    survivors = [line.split(":")[0].strip() for line in _mutmut(work, "results").splitlines()
                 if line.strip().endswith(("survived", "no tests", "suspicious"))]
    (work / "survivors.txt").write_text("\n".join(_mutmut(work, "show", name) for name in survivors))
    tested = stats["total"] - stats["skipped"]
    killed = stats["killed"] + stats["timeout"]
    return {"module": module, "mutants": tested, "killed": killed, "survived": tested - killed,
            "score": round(100 * killed / max(tested, 1), 1), "seconds": round(seconds)}


def main(modules: list[str]) -> int:
    unknown = [m for m in modules if m not in TESTS]
    if unknown:
        print(f"error: unknown module {unknown[0]!r}; choose from {', '.join(TESTS)}", file=sys.stderr)
        return 2
    summary_path = WORK / "summary.json"
    WORK.mkdir(exist_ok=True)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for module in modules or list(TESTS):
        row = mutate(module)
        summary[module] = row
        summary_path.write_text(json.dumps(summary, indent=1))
        print(f"{module}: {row['killed']} of {row['mutants']} mutants killed ({row['score']} %), "
              f"{row['survived']} survived (.mutation/{module}/survivors.txt), {row['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
