"""One command re-runs every study the claims read: the study plan.

``python -m bgtutorial.plan --publish [--workers 2] [--seeds 0 1 2 3 4] [--shard 0/2] [--dry-run]``

The plan is every arm of :data:`bgtutorial.claims.FAMILY` and the notebooks' pictures
(:func:`bgtutorial.claims.plan_arms`) at every seed, on the ``glyphs`` preset. It is resumable: a
finished run is skipped, an interrupted one resumes from its ``last.pt``, so the same command run again
goes on where it stopped. ``--workers N`` runs N runs at once, each a process of its own with
``--threads`` torch threads (on a GPU they share the device: several small runs fill it better than
one); ``--shard i/n`` takes every n-th run from the i-th, to split the plan across machines. With
``--publish`` each run's history is shipped into ``bgtutorial/published/`` as soon as it finishes.

A plan run evaluates the test classes only where the studies read them: before training (epoch 0,
the pairing check) and after the last epoch (``eval_every`` = the epochs; ``eval_every`` is not part of
a run's identity, so the histories are those of the preset).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from .claims import SEEDS, Arm, plan_arms
from .utils import CLI_ERRORS, error_line, run_cli

__all__ = ["Job", "plan_jobs", "run_job", "main"]


@dataclass(frozen=True)
class Job:
    """One run of the plan: an arm at a seed, trained into ``folder``."""
    preset: str
    arm: Arm
    seed: int
    folder: str

    def overrides(self) -> dict[str, Any]:
        """The config fields this run sets on its preset: seed, method, noise levels and the arm's variant."""
        return _overrides(self.arm, self.seed)

    def config(self, **extra: Any):
        from .config import load_config

        return load_config(self.preset, out=self.folder, **self.overrides(), **extra)

    def stem(self) -> str:
        from .experiments import published_stem

        return published_stem(self.folder, self.config())

    def state(self) -> str:
        """"done" (a finished history), "partial" (a run folder, unfinished) or "todo"."""
        from .experiments import _finished

        if _finished(self.config()) is not None:
            return "done"
        return "partial" if Path(self.folder, "last.pt").is_file() else "todo"


def _overrides(arm: Arm, seed: int) -> dict[str, Any]:
    from .experiments import METHODS

    return dict(seed=seed, batch_module=METHODS[arm.method], label_noise=arm.label_noise, corrupt=arm.corrupt,
                **arm.overrides())


def plan_jobs(runs: str | Path = "runs/study", seeds: Sequence[int] = SEEDS, preset: str = "glyphs",
              arms: Sequence[Arm] | None = None) -> list[Job]:
    """Every run of the plan, arm by arm and seed by seed, with the folder each one trains into (the
    folders ``python -m bgtutorial.experiments`` uses for the same runs)."""
    from .config import load_config
    from .experiments import run_folder, variant_dir

    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    jobs = []
    for arm in (plan_arms() if arms is None else arms):
        for seed in seeds:
            cfg = load_config(preset, **_overrides(arm, seed))
            folder = run_folder(variant_dir(runs, cfg), preset, arm.method, seed, arm.label_noise, arm.corrupt)
            jobs.append(Job(preset, arm, seed, str(folder)))
    return jobs


def run_job(job: Job, publish: str | None, command: str, threads: int, device: str = "") -> tuple[str, float, float]:
    """Train (or load, or resume) one run with evaluation only at epochs 0 and last; publish its history
    into the folder ``publish`` when given. Returns (shipped name, final R@1, seconds)."""
    import torch

    from .experiments import publish_history, run_or_load

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    overrides = dict(job.overrides(), eval_every=job.config().epochs, progress=False)
    if device:
        overrides["device"] = device
    h = run_or_load(job.preset, job.folder, **overrides)
    if publish is not None:
        publish_history(h, job.stem(), command, dest=publish)
    return job.stem(), float(h["epochs"][-1]["R@1"]), time.perf_counter() - t0


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n with integers, e.g. 0/2; got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bgtutorial.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/study", help="where the runs train (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--preset", default="glyphs")
    p.add_argument("--workers", type=int, default=1, help="runs at once, one process each (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default: %(default)s)")
    p.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: this machine's share of the plan")
    p.add_argument("--device", default="", help="cpu or cuda (default: CUDA when present)")
    p.add_argument("--publish", action="store_true", help="ship each finished run's history into bgtutorial/published/")
    p.add_argument("--dest", default=None, help=argparse.SUPPRESS)     # tests publish into a temporary folder
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.workers < 1 or a.threads < 1:
        print(f"error: --workers and --threads must be >= 1, got {a.workers} and {a.threads}", file=sys.stderr)
        return 2
    try:
        jobs = plan_jobs(a.runs, a.seeds, a.preset)[a.shard[0]::a.shard[1]]
        states = [job.state() for job in jobs]
    except CLI_ERRORS as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    todo = [job for job, state in zip(jobs, states) if state != "done" or a.publish]
    print(f"study plan: {len(jobs)} runs in this shard, {states.count('done')} done, {states.count('partial')} "
          f"partial, {states.count('todo')} to train", flush=True)
    if a.dry_run:
        for job, state in zip(jobs, states):
            print(f"{state:8} {job.stem()}  ({job.folder})")
        return 0
    from .experiments import PUBLISHED

    dest = None if not a.publish else str(a.dest or PUBLISHED)
    command = "python -m bgtutorial.plan " + " ".join(argv if argv is not None else sys.argv[1:])
    ctx = multiprocessing.get_context("spawn")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))

    def body() -> int:
        with ProcessPoolExecutor(a.workers, mp_context=ctx) as pool:
            futures = {pool.submit(run_job, job, dest, command, a.threads, a.device): job for job in todo}
            for fut in tqdm(as_completed(futures), total=len(futures), desc="study plan"):
                name, r1, seconds = fut.result()
                print(f"{name}: R@1 {r1:.3f} ({seconds:.0f} s)" + (" published" if dest else ""), flush=True)
        return 0
    return run_cli(body, "interrupted: run the same command again: finished runs are skipped, an interrupted one "
                         "resumes from its last.pt")

if __name__ == "__main__":
    sys.exit(main())
