"""``python -m bgtutorial.experiments``: train (or read the shipped histories of) a study and print its tables.

Every argument is checked before the first run trains: a seed, level or method given twice (two
runs of one seed are one measurement, not two), a study variant that does not apply to a method
(``--plain-weight`` or ``--unshared-head`` on the baseline, ``--lam``/``--k`` beside another method)
and a value out of its bounds each end the command with one line and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from . import experiments as ex
from .config import load_config
from .config_checks import check_paths
from .utils import CLI_ERRORS, error_line, run_cli

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bgtutorial.experiments", description=ex.__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="glyphs")
    p.add_argument("--runs", default="runs/study")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="distinct seeds (each once)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0], help="distinct levels of --field")
    p.add_argument("--field", choices=ex.ROBUSTNESS_FIELDS, default="label_noise",
                   help="label_noise: share of labels flipped; corrupt: share of training images corrupted")
    p.add_argument("--methods", nargs="+", default=list(ex.METHODS))
    p.add_argument("--epochs", type=int, default=None)
    v = p.add_argument_group("study variants (each run goes to a subfolder of --runs named by the variant, and its "
                             "shipped history's name says the variant)")
    v.add_argument("--imbalance", type=float, default=None,
                   help="long-tailed training classes, rho = n_max / n_min")
    v.add_argument("--steps-per-epoch", type=int, default=None,
                   help="optimiser steps per epoch (0: one pass over the training set); with --imbalance, the "
                        "balanced run's count gives equal optimiser steps")
    v.add_argument("--unshared-head", action="store_true",
                   help="the module stream gets its own head and loss (batchformer, bgformer)")
    v.add_argument("--module-loss", choices=("one", "separate"), default=None,
                   help="the module half's loss: one over the doubled batch, or its own with its own proxies "
                        "(default: its own exactly with --unshared-head; batchformer, bgformer)")
    v.add_argument("--plain-weight", type=float, default=None,
                   help="alpha in [0, 1]: loss = alpha L(plain) + (1 - alpha) L(module) (default: one loss over both "
                        "halves; batchformer, bgformer)")
    v.add_argument("--lam", type=float, default=None, help="BGFormer's lambda (visual vs label path)")
    v.add_argument("--k", type=int, default=None, help="BGFormer's K (keys kept per query)")
    p.add_argument("--publish", action="store_true",
                   help="also write each finished run's history (no weights, no per-step losses) into the "
                        "package's published/ folder, where compare(..., published=True) finds it; each run is "
                        "published as soon as it finishes")
    p.add_argument("--force", action="store_true",
                   help="retrain runs whose folder holds another config (their run files are deleted)")
    p.add_argument("--shipped", action="store_true",
                   help="train nothing: read the histories shipped with the package and print the tables (with a "
                        "study variant, also each method against its plain runs, paired by seed)")
    return p


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    """The config overrides the command line asks for (study variants and budget)."""
    extra: dict[str, Any] = {}
    for field, value in (("epochs", a.epochs), ("imbalance", a.imbalance), ("steps_per_epoch", a.steps_per_epoch),
                         ("plain_weight", a.plain_weight)):
        if value is not None:
            extra[field] = value
    if a.unshared_head:
        extra["shared_head"] = False
    if a.module_loss is not None:
        extra["module_loss"] = a.module_loss
    module = {key: value for key, value in (("lam", a.lam), ("k", a.k)) if value is not None}
    if module:
        extra["module_kwargs"] = module
    return extra


def _refusal(a: argparse.Namespace, extra: dict[str, Any]) -> str | None:
    """Why the command cannot run as asked (one line), or ``None``: checked before anything trains."""
    for flag, values in (("--seeds", a.seeds), ("--noise", a.noise), ("--methods", a.methods)):
        try:
            ex.distinct(values, flag)
        except ValueError as err:
            return str(err)
    unknown = [m for m in a.methods if m not in ex.METHODS]
    if unknown:
        return f"unknown method {unknown[0]!r}; choose from {', '.join(ex.METHODS)}"
    if "module_kwargs" in extra and set(a.methods) != {"bgformer"}:
        return ("--lam and --k are BGFormer's options: run them with --methods bgformer (the other methods' runs "
                "are the plain study's)")
    stream = [f for f, k in (("--plain-weight", "plain_weight"), ("--unshared-head", "shared_head"),
                             ("--module-loss", "module_loss")) if k in extra]
    if stream and "baseline" in a.methods:
        flag = stream[0]
        return (f"{flag} changes the batch module's stream, which the baseline does not have: run it with "
                "--methods batchformer bgformer (the baseline's runs are the plain study's)")
    if a.shipped and extra.keys() - {"epochs"} and len(a.seeds) < 2:
        return ("--shipped with a study variant compares it with the plain runs, paired by seed: pass at least 2 "
                "seeds (e.g. --seeds 0 1 2 3 4)")
    if a.shipped and (a.publish or a.force):
        return "--shipped reads the shipped histories and trains nothing: drop --publish and --force"
    return None


def _check_configs(a: argparse.Namespace, extra: dict[str, Any], runs: str) -> None:
    """Build every run's config once (bounds, types, paths) before the first run trains."""
    for level in a.noise:
        for method in a.methods:
            for seed in a.seeds:
                folder = ex.run_folder(runs, a.preset, method, seed, **{a.field: level})
                cfg = load_config(a.preset, out=str(folder), seed=seed, batch_module=ex.METHODS[method],
                                  **{a.field: level}, **extra)
                if not a.shipped:
                    check_paths(cfg)
                if a.publish:
                    ex.publish_guard(cfg, ex.PUBLISHED / f"{ex.published_stem(folder, cfg)}.json")


def _study(a: argparse.Namespace, extra: dict[str, Any], runs: str, command: str) -> tuple[dict, dict]:
    """Train (or read) every run, printing each as it comes: ``(study, plain runs of the same seeds)``."""
    study: dict[float, dict[str, list[dict[str, Any]]]] = {}
    plain: dict[float, dict[str, list[dict[str, Any]]]] = {}
    for level in a.noise:
        for method in a.methods:
            for seed in a.seeds:
                if a.shipped:
                    h = ex.published_study(a.preset, (method,), (seed,), **{a.field: level}, **extra)[method][0]
                    if extra:
                        plain.setdefault(level, {}).setdefault(method, []).append(
                            ex.published_study(a.preset, (method,), (seed,), **{a.field: level})[method][0])
                else:
                    h = ex.compare(a.preset, runs, (method,), (seed,), progress=False, force=a.force,
                                   **{a.field: level}, **extra)[method][0]
                study.setdefault(level, {}).setdefault(method, []).append(h)
                print(f"{a.preset} {method} {a.field}={level:g} seed {seed}: R@1 {h['epochs'][-1]['R@1']:.3f}",
                      flush=True)
                if a.publish:
                    folder = ex.run_folder(runs, a.preset, method, seed, **{a.field: level})
                    print("published", ex.publish_history(h, ex.published_stem(folder, h["config"]), command,
                                                          dest=ex.PUBLISHED), flush=True)
    return study, plain


def _tables(a: argparse.Namespace, extra: dict[str, Any], study: dict, plain: dict) -> None:
    print(f"| preset | {a.field.replace('_', ' ')} | method | R@1 mean ± std | MAP@R mean ± std | seeds |")
    print("|---|---|---|---|---|---|")
    for noise, res in study.items():
        r1, mapr = ex.summarise(res, "R@1"), ex.summarise(res, "MAP@R")
        for m in res:
            print(f"| {a.preset} | {noise:g} | {m} | {r1[m][0]:.3f} ± {r1[m][1]:.3f} | "
                  f"{mapr[m][0]:.3f} ± {mapr[m][1]:.3f} | {r1[m][2]} |")
    print(ex.paired_table(study, a.field))
    if plain:
        print(f"\n{' '.join(ex.variant_flags(extra))} against the plain runs of the same method, paired by seed:")
        print(ex.paired_table_against(study, plain, a.field))


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    extra = _overrides(a)
    problem = _refusal(a, extra)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    command = "python -m bgtutorial.experiments " + " ".join(argv if argv is not None else sys.argv[1:])

    def body() -> int:
        runs = str(ex.variant_dir(a.runs, extra))
        _check_configs(a, extra, runs)
        study, plain = _study(a, extra, runs, command)
        _tables(a, extra, study, plain)
        return 0
    return run_cli(body)
