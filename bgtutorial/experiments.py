"""Comparisons the notebooks call: baseline vs BatchFormer vs BGFormer over seeds, label noise
and corrupted training images.

``python -m bgtutorial.experiments --preset glyphs --seeds 0 1 2 --noise 0 0.4 [--field corrupt] [--force]``

Each run follows "train or load": a finished run's ``history.json`` is read instead of
training again, so a notebook can re-plot in seconds. A history is returned only for the
config asked for: a folder holding a run of another method, seed, noise level or budget
raises ``ConfigMismatchError`` naming the fields (``force=True`` / ``--force`` retrains).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from .checkpoint import (HISTORY_FILE, ConfigMismatchError, check_config, history_problem, load_checkpoint,
                         load_history, restoring, stored_config)
from .models import BATCH_MODULES
from .config import load_config
from .losses import CLASSIFICATION_LOSSES
from .train import train
from .stats import paired_summary, paired_table, paired_table_against, paired_verdict, summarise
from .config_checks import check_paths
from .utils import UserError, bars_disabled

__all__ = ["run_or_load", "compare", "robustness_study", "ablate", "summarise", "embed_run", "head_metrics",
           "METHODS", "ROBUSTNESS_FIELDS", "run_folder", "load_run_model", "PUBLISHED", "published_history",
           "publish_history", "optimiser_steps", "paired_summary", "paired_table", "published_study", "paired_verdict",
           "published_stem", "variant_flags", "variant_dir", "VARIANTS", "MODULE_VARIANTS", "distinct",
           "publish_guard"]

#: method name -> batch module; read from the one list in models.py ("none" is called "baseline" here)
METHODS = {("baseline" if name == "none" else name): name for name in BATCH_MODULES}


def distinct(values: Sequence[Any], what: str) -> None:
    """``ValueError`` when ``values`` (a study's seeds, levels or methods) gives one twice: a rerun of a seed
    is the same measurement, and would count as another paired seed."""
    values = list(values)
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        shown = f"{twice[0]:g}" if isinstance(twice[0], float) else str(twice[0])
        raise ValueError(f"{what}: {shown} is given twice; a rerun is the same measurement, not another one, so "
                         "pass each value once")


def _finished(cfg) -> dict[str, Any] | None:
    """The history in ``cfg.run_dir`` when it is a finished run (all epochs) of ``cfg``, else ``None``;
    a folder holding another config raises ``ConfigMismatchError``."""
    path = cfg.run_dir / HISTORY_FILE
    if not path.is_file():
        return None
    h = load_history(path)
    check_config(h["config"], cfg, f"the run folder {cfg.run_dir}")
    return h if len(h["epochs"]) >= cfg.epochs else None


def run_or_load(preset: str, out: str | Path, callback=None, force: bool = False, **overrides: Any) -> dict[str, Any]:
    """Train ``preset`` into ``out`` unless a finished history of this very config is there; return the history.

    An unfinished run of the same config resumes from its ``last.pt``; a folder holding another
    config raises ``ConfigMismatchError`` (fields named), unless ``force=True``, which deletes its
    run files and trains again. ``callback(history)`` is passed to :func:`train`.
    """
    cfg = load_config(preset, out=str(out), **overrides)
    check_paths(cfg)
    h = None if force else _finished(cfg)
    return h if h is not None else train(cfg, resume=not force, callback=callback, force=force)


#: the config fields :func:`robustness_study` can sweep: flipped labels, corrupted training images
ROBUSTNESS_FIELDS = ("label_noise", "corrupt")


def run_folder(runs_dir: str | Path, preset: str, method: str, seed: int, label_noise: float = 0.0,
               corrupt: float = 0.0) -> Path:
    """The folder :func:`compare` trains ``method`` into: ``<runs>/<preset>-<method>-noise<p>[-corrupt<q>]-seed<s>``.

    Without corrupted images the name is the one it always had (``glyphs-bgformer-noise0-seed0``), so
    clean runs are shared by every notebook and by both robustness studies.
    """
    tail = f"-corrupt{corrupt:g}" if corrupt else ""
    return Path(runs_dir) / f"{preset}-{method}-noise{label_noise:g}{tail}-seed{seed}"


#: histories of finished CPU runs shipped with the package (per-epoch metrics only, no weights), one
#: ``<run folder name>.json`` each, written by ``python -m bgtutorial.experiments ... --publish``;
#: docs/results.md says how and on which machine they were measured
PUBLISHED = Path(__file__).parent / "published"


def _shipped(cfg, folder: str | Path, strict: bool, publish: str = "") -> dict[str, Any] | None:
    """The shipped history of ``folder`` for ``cfg``: the one lookup behind :func:`published_history`
    (``strict=False``: ``None`` when missing, of another config or unfinished, with a warning for
    another config) and :func:`published_study` (``strict=True``: those raise, ``publish`` says how)."""
    path = PUBLISHED / f"{published_stem(folder, cfg)}.json"
    if not path.is_file():
        if strict:
            raise FileNotFoundError(f"no shipped history {path.name} in {PUBLISHED}: {publish}")
        return None
    h = _read_shipped(path)
    try:
        check_config(h["config"], cfg, f"the shipped history {path.name}")
    except ConfigMismatchError as err:
        if strict:
            raise
        warnings.warn(f"{err}: not used, the run is trained instead", stacklevel=3)
        return None
    if len(h["epochs"]) < cfg.epochs:
        if strict:
            raise ValueError(f"the shipped history {path.name} has {len(h['epochs'])} of {cfg.epochs} epochs: {publish}")
        return None
    return h


def _read_shipped(path: Path) -> dict[str, Any]:
    """A shipped history, read and checked: ``UserError`` naming the file when it is not JSON, not a
    history (:func:`~bgtutorial.checkpoint.history_problem`) or has no final R@1 and MAP@R (top-1 for a
    recognition run of glyphs-lt)."""
    fix = ("reinstall bgtutorial, or train and publish that run again (python -m bgtutorial.experiments ... "
           "--publish)")
    try:
        h = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"the shipped history {path} is not JSON ({type(err).__name__}): {fix}") from None
    problem = history_problem(h)
    if problem is None and not h["epochs"]:
        problem = "no epoch record"
    if problem is None:
        recognition = h["config"].get("loss") in CLASSIFICATION_LOSSES        # glyphs-lt scores top-1
        if not ({"top1"} if recognition else {"R@1", "MAP@R"}) <= h["epochs"][-1].keys():
            problem = "its last epoch record has no " + ("top1" if recognition else "R@1 or no MAP@R")
    if problem:
        raise UserError(f"the shipped history {path} is damaged ({problem}): {fix}")
    return h


def published_history(preset: str, folder: str | Path, **overrides: Any) -> dict[str, Any] | None:
    """The shipped history of the run ``folder`` would hold, or ``None`` when none was shipped.

    Looked up by :func:`published_stem` in :data:`PUBLISHED` and returned only when its config is the
    one asked for (``load_config(preset, **overrides)``); a shipped history of another config (the
    preset changed since it was measured) is ignored with a warning naming the fields.
    """
    return _shipped(load_config(preset, out=str(folder), **overrides), folder, strict=False)


def published_study(preset: str, methods: Sequence[str] = tuple(METHODS), seeds: Sequence[int] = (0,),
                    label_noise: float = 0.0, corrupt: float = 0.0, **overrides: Any) -> dict[str, list[dict[str, Any]]]:
    """The shipped histories ``{method: [history per seed]}`` of one study; unlike :func:`compare`, it never trains.

    The runs are the ones :func:`compare` would train with the same arguments (folder names and
    config), read from :data:`PUBLISHED`, for a notebook that must not spend hours retraining a study
    shipped with the package. A run without a shipped history raises ``FileNotFoundError``, and one
    whose shipped history belongs to another config raises ``ConfigMismatchError`` naming the
    fields; both messages say how to train and publish it.
    """
    distinct(seeds, "seeds"), distinct(methods, "methods")
    out: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        for seed in seeds:
            folder = run_folder("runs", preset, method, seed, label_noise, corrupt)
            cfg = load_config(preset, out=str(folder), seed=seed, batch_module=METHODS[method],
                              label_noise=label_noise, corrupt=corrupt, **overrides)
            how = (f"train it with compare(..., published=False) or `python -m bgtutorial.experiments --preset "
                   f"{preset} --methods {method} --seeds {seed} "
                   + (f"--noise {corrupt:g} --field corrupt" if corrupt else f"--noise {label_noise:g}")
                   + "".join(f" {flag}" for flag in variant_flags(cfg)) + " --publish`")
            out.setdefault(method, []).append(_shipped(cfg, folder, strict=True, publish=how))
    return out


#: the study variants a shipped history's name and ``python -m bgtutorial.experiments`` flags carry:
#: config field -> (its plain value, name suffix, command-line flag)
VARIANTS = {"imbalance": (1.0, "-imbalance{:g}", "--imbalance {:g}"),
            "steps_per_epoch": (0, "-steps{}", "--steps-per-epoch {}"),
            "shared_head": (True, "-unshared-head", "--unshared-head"),
            "module_loss": ("auto", "-{}-loss", "--module-loss {}"),
            "plain_weight": (-1.0, "-alpha{:g}", "--plain-weight {:g}")}
#: BGFormer options a study varies (``Config.module_kwargs``): key -> (name suffix, flag)
MODULE_VARIANTS = {"lam": ("-lam{:g}", "--lam {:g}"), "k": ("-k{}", "--k {}")}


def _variants(config: Any) -> list[tuple[str, str]]:
    """``(name suffix, command-line flag)`` of each study variant ``config`` (a ``Config`` or a
    history's config dict) departs from, in :data:`VARIANTS` then :data:`MODULE_VARIANTS` order."""
    def field(name: str, default: Any) -> Any:
        return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)

    out = []
    for name, (plain, suffix, flag) in VARIANTS.items():
        value = field(name, plain)
        if value != plain:
            out.append((suffix.format(value), flag.format(value)))
    kwargs = field("module_kwargs", {}) or {}
    out += [(suffix.format(kwargs[key]), flag.format(kwargs[key]))
            for key, (suffix, flag) in MODULE_VARIANTS.items() if key in kwargs]
    return out


def published_stem(folder: str | Path, config: Any) -> str:
    """A shipped history's file stem: the run folder's name, then a suffix per study variant the
    config (a ``Config`` or a history's config dict) departs from: ``-imbalance<rho>`` for long-tailed
    runs, ``-steps<n>`` for a set number of optimiser steps per epoch (never the plain run's name),
    ``-unshared-head`` when the module stream has its own head, ``-alpha<a>`` for a weighted
    plain half (``plain_weight``), ``-lam<l>`` / ``-k<K>`` for BGFormer's λ and K. Runs of a variant
    carry the same folder names as the plain runs', in another runs directory."""
    return Path(folder).name + "".join(suffix for suffix, _ in _variants(config))


def variant_flags(config: Any) -> list[str]:
    """The ``python -m bgtutorial.experiments`` flags that train ``config``'s study variant."""
    return [flag for _, flag in _variants(config)]


def variant_dir(runs_dir: str | Path, config: Any) -> Path:
    """Where :func:`main` trains a study variant: ``runs_dir`` for the plain runs, else a subfolder named
    by the variant (``<runs>/imbalance10-steps51``, ``<runs>/alpha0.01``, ``<runs>/lam1``)."""
    parts = [flag.lstrip("-").replace(" ", "").replace("steps-per-epoch", "steps").replace("plain-weight", "alpha")
             for flag in variant_flags(config)]
    return Path(runs_dir).joinpath("-".join(parts)) if parts else Path(runs_dir)


def optimiser_steps(history: dict[str, Any]) -> int:
    """How many optimiser steps a run took: counted from its per-step log, or, for a shipped history
    (which has no per-step log), as recorded when it was published."""
    if "steps" in history:
        return len(history["steps"])
    return int(history["published"]["optimiser_steps"])


def publish_history(history: dict[str, Any], name: str, command: str, dest: str | Path = PUBLISHED) -> Path:
    """Write a finished run's history, less its per-step losses, as ``dest/<name>.json``; return the path.

    ``command`` (what produced it), this machine and the number of optimiser steps are recorded
    under ``"published"`` (:func:`optimiser_steps` reads it back).
    """
    dest = Path(dest)
    path = dest / f"{name}.json"
    publish_guard(history["config"], path)
    out = {k: v for k, v in history.items() if k != "steps"}
    out["published"] = {"command": command, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                        "device": history.get("device"), "optimiser_steps": len(history["steps"])}
    dest.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return path


def publish_guard(config: Any, path: str | Path) -> None:
    """``UserError`` when ``path`` holds a shipped history of another config than ``config`` (a ``Config`` or
    a history's config dict): publishing never files one run's history under another run's name."""
    import dataclasses

    from .config import Config

    path = Path(path)
    if not path.is_file():
        return
    if isinstance(config, dict):
        names = {f.name for f in dataclasses.fields(Config)}
        config = Config(**{k: v for k, v in config.items() if k in names})
    try:
        check_config(_read_shipped(path)["config"], config, "")
    except ConfigMismatchError as err:
        fields = ", ".join(err.fields)
        raise UserError(f"{path} holds the shipped history of another config ({fields} differ): publishing would "
                        "replace it; publish that study under its own variant flags, or delete the file first if "
                        "replacing it is meant") from None


def compare(preset: str, runs_dir: str | Path, methods: Sequence[str] = tuple(METHODS), seeds: Sequence[int] = (0,),
            label_noise: float = 0.0, progress: bool = True, corrupt: float = 0.0, published: bool = False,
            **overrides: Any) -> dict[str, list[dict[str, Any]]]:
    """Histories ``{method: [history per seed]}`` for one preset, same seeds and budget for every method.

    ``label_noise``: share of training labels flipped; ``corrupt``: share of training images
    corrupted (``Config.corrupt``). Folders: :func:`run_folder`. ``published=True``: a run that is
    not finished in ``runs_dir`` is read from the package's shipped histories
    (:func:`published_history`) when one of this config exists, instead of being trained; such a
    history has a ``"published"`` key, and no weights (``last.pt``) come with it.
    """
    distinct(seeds, "seeds"), distinct(methods, "methods")
    out: dict[str, list[dict[str, Any]]] = {}
    jobs = [(m, s) for m in methods for s in seeds]
    desc = f"{preset} noise={label_noise}" + (f" corrupt={corrupt}" if corrupt else "")
    for method, seed in tqdm(jobs, desc=desc, disable=bars_disabled(progress)):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        folder = run_folder(runs_dir, preset, method, seed, label_noise, corrupt)
        kw = dict(seed=seed, batch_module=METHODS[method], label_noise=label_noise, corrupt=corrupt, **overrides)
        if published and _finished(load_config(preset, out=str(folder), **kw)) is None:
            shipped = published_history(preset, folder, **kw)
            if shipped is not None:
                out.setdefault(method, []).append(shipped)
                continue
        out.setdefault(method, []).append(run_or_load(preset, folder, progress=False, **kw))
    return out


def robustness_study(preset: str, runs_dir: str | Path, noise_levels: Sequence[float] = (0.0, 0.2, 0.4),
                     seeds: Sequence[int] = (0, 1, 2), methods: Sequence[str] = tuple(METHODS),
                     field: str = "label_noise", **overrides: Any) -> dict[float, dict[str, list[dict[str, Any]]]]:
    """Train every method at each level p of ``field``: ``{p: {method: [histories]}}``.

    ``field="label_noise"`` (default): a share p of the training labels flipped; ``field="corrupt"``:
    a share p of the training images corrupted (occluded or replaced by noise, ``Config.corrupt``).
    ``noise_levels`` are the levels p of either field. The test split is clean in both. Level 0 of
    either field is the clean run, the same folder for both (:func:`run_folder`).
    """
    if field not in ROBUSTNESS_FIELDS:
        raise ValueError(f"field must be one of {', '.join(ROBUSTNESS_FIELDS)}, got {field!r}")
    distinct(noise_levels, "noise_levels")
    return {p: compare(preset, runs_dir, methods, seeds, **{field: p}, **overrides) for p in noise_levels}


def ablate(preset: str, runs_dir: str | Path, field: str, values: Sequence[Any], method: str = "bgformer",
           seed: int = 0, progress: bool = True, **overrides: Any) -> dict[Any, dict[str, Any]]:
    """One run per value of ``field`` (a config field, or a batch-module option such as ``k``,
    ``visual``, ``depth``, ``lam``): ``{value: history}``, same seed and budget for each."""
    from .config import Config

    config_fields = {f for f in Config.__dataclass_fields__}
    distinct(values, "values")
    out = {}
    for value in tqdm(values, desc=f"ablate {field}", disable=bars_disabled(progress)):
        extra = dict(overrides)
        if field in config_fields:
            extra[field] = value
        else:
            extra["module_kwargs"] = {**extra.get("module_kwargs", {}), field: value}
        folder = Path(runs_dir) / f"{preset}-{method}-ablate-{field}-{value}-seed{seed}"
        out[value] = run_or_load(preset, folder, seed=seed, batch_module=METHODS[method], progress=False, **extra)
    return out


def _run_config(run_dir: Path, **overrides: Any):
    """The stored config of a finished run as a ``Config`` (``overrides`` applied), or a clear error."""
    import dataclasses

    from .config import Config

    saved = stored_config(run_dir)
    if saved is None:
        raise FileNotFoundError(f"{run_dir} holds no finished run (no config.json, history.json or last.pt); "
                                "train it first (experiments.run_or_load or python -m bgtutorial.train)")
    names = {f.name for f in dataclasses.fields(Config)}
    return Config(**{**{k: v for k, v in saved.items() if k in names}, **overrides})


#: the advice when a finished run's checkpoint does not fit its config
_RETRAIN = "train the run again (run_or_load(..., force=True) or python -m bgtutorial.train ... --force)"


def _test_time_net(run_dir: Path, checkpoint: str, **overrides: Any):
    """``(cfg, network without the batch module, test dataset, device)`` of a finished run.

    The batch module's weights are not loaded: thanks to the shared head the test-time network has
    no module (an unshared run keeps both heads).
    """
    from .data.splits import build_datasets
    from .train import build_net
    from .utils import device

    cfg = _run_config(run_dir, **overrides)
    _, test_ds = build_datasets(cfg)
    dev = device(cfg.device or None)
    model = build_net(cfg, with_module=False, pretrained=False).to(dev)
    with restoring(run_dir / checkpoint, _RETRAIN):
        state = load_checkpoint(run_dir / checkpoint, dev, config=cfg)["model"]
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("batch_module.")})
    return cfg, model, test_ds, dev


def embed_run(run_dir: str | Path, checkpoint: str = "last.pt", **overrides: Any):
    """Test-set embeddings of a finished run with the *test-time* network (no batch module).

    Returns ``(embeddings (N, E), labels (N,), test dataset)``, the points the run's history scores:
    L2-normalised head outputs, ranked by cosine (``metrics.knn``, ``retrieval_metrics``), or, for a
    run trained with the hyperbolic loss, the head outputs mapped into its Poincaré ball
    (``losses.to_poincare``), ranked by Poincaré distance (``losses.poincare_knn``,
    ``evaluate.poincare_metrics``); cosine on those would score another ranking than the history's.
    The weights are the last epoch's (``last.pt``): nothing is chosen on the test classes. The batch
    module's weights are not loaded: thanks to the shared head the test-time network has no module.
    """
    from .losses import to_poincare
    from .evaluate import embed_dataset

    cfg, model, test_ds, dev = _test_time_net(Path(run_dir), checkpoint, **overrides)
    if cfg.loss == "hyperbolic":
        head, _, labels = embed_dataset(model, test_ds, cfg.eval_batch_size, dev, outputs="head_and_features")
        return to_poincare(head, cfg.curvature, cfg.clip_r), labels, test_ds
    emb, labels = embed_dataset(model, test_ds, cfg.eval_batch_size, dev)
    return emb, labels, test_ds


def head_metrics(run_dir: str | Path, checkpoint: str = "last.pt", with_nmi: bool = False,
                 **overrides: Any) -> dict[str, dict[str, float]]:
    """Retrieval metrics of a finished run's heads on the *plain* test features, without the module.

    ``{"plain head": metrics}``, plus ``"module head"`` for a run trained with ``shared_head=False``:
    the module stream's own head applied to features that never went through the batch module,
    the train/test mismatch that BatchFormer's shared head avoids. Weights are ``last.pt``'s. The
    scores are :func:`bgtutorial.evaluate.evaluate`'s, the ones a history records: cosine, or for a
    hyperbolic run Poincaré distance on the head output plus cosine on the backbone feature
    (``feat_`` keys, plain head only).
    """
    from .evaluate import evaluate

    cfg, model, test_ds, dev = _test_time_net(Path(run_dir), checkpoint, **overrides)
    scores = evaluate(model, test_ds, cfg.eval_batch_size, with_nmi, dev, cfg)
    out = {"plain head": {k: v for k, v in scores.items() if not k.startswith("module_head_")}}
    module = {k.removeprefix("module_head_"): v for k, v in scores.items() if k.startswith("module_head_")}
    if module:
        out["module head"] = module
    return out


def load_run_model(run_dir: str | Path, checkpoint: str = "last.pt", dev=None):
    """A finished run's config and network *with* its batch module, in eval mode: ``(cfg, net)``.

    The weights are the last epoch's (``last.pt``). ``net.batch_module`` is the trained BGFormer or
    BatchFormer (``None`` for the baseline); ``net.features(images)`` gives the backbone's pooled
    features (B, D) that the module reads.
    """
    from .train import build_net
    from .utils import device

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    dev = dev or device(cfg.device or None)
    with restoring(run_dir / checkpoint, _RETRAIN):
        state = load_checkpoint(run_dir / checkpoint, dev, config=cfg)["model"]
        classes = len(state["head.bias"]) if cfg.classification else None     # glyphs-lt: the classifier's width
    net = build_net(cfg, pretrained=False, num_classes=classes).to(dev)
    with restoring(run_dir / checkpoint, _RETRAIN):
        net.load_state_dict(state)
    return cfg, net.eval()


def main(argv: list[str] | None = None) -> int:
    """``python -m bgtutorial.experiments``: :func:`bgtutorial.study_cli.main`."""
    from .study_cli import main as study_main

    return study_main(argv)


if __name__ == "__main__":
    sys.exit(main())
