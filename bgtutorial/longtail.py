"""Long-tailed recognition on the glyphs (preset ``glyphs-lt``): where BatchFormer's paper makes its claim.

``python -m bgtutorial.longtail --seeds 0 1 2 3 4 [--publish] [--shipped]``

* **Metrics** (:func:`shot_groups`, :func:`top1_metrics`, :func:`classification_metrics`): top-1
  accuracy on the balanced test split, overall and on the Many / Medium / Few classes, the groups of
  the long-tailed literature by training images per class: > 100, 20-100, < 20 (the authors'
  ``utils.py`` ``shot_acc``, docs/recipes.md). A group's accuracy is the mean of its classes'
  accuracies. Where the profile's largest class has 100 images or fewer the Many group would be
  empty, so both thresholds are then scaled by ``n_max / 500`` (CIFAR-100-LT's largest class has
  500 images: > n_max/5 and < n_max/25); a group with no class is recorded as ``None``.
* **The study** (:func:`lt_study`, :func:`main`): four conditions, cross-entropy and Balanced
  Softmax, each with and without BatchFormer, over seeds; every run goes through the one training
  engine (:func:`bgtutorial.experiments.run_or_load`), and ``--shipped`` prints the tables from the
  histories shipped in ``bgtutorial/published/`` without training. The paired rule is
  :mod:`bgtutorial.stats`: per-seed differences, a 95 % t-interval, "supported" when it excludes 0.
* **The mechanism** (:func:`head_tail_coupling`): in a trained module, how much Few-class samples attend
  to Many-class ones, and how much gradient Many-class losses send to Few-class features.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["MANY_SHOT", "FEW_SHOT", "CIFAR_N_MAX", "shot_thresholds", "shot_groups", "top1_metrics",
           "classification_metrics", "head_tail_coupling", "CONDITIONS", "lt_folder", "lt_study", "lt_tables", "main"]

#: Many-shot classes have more than this many training images, Few-shot fewer than :data:`FEW_SHOT`
MANY_SHOT = 100
FEW_SHOT = 20
#: the largest class of CIFAR-100-LT (500 images), the reference the scaled thresholds keep the ratios of
CIFAR_N_MAX = 500
GROUPS = ("many", "medium", "few")


def shot_thresholds(n_max: int) -> tuple[float, float]:
    """``(many_above, few_below)``: (100, 20) when the largest class has more than 100 images, else both
    scaled by ``n_max / 500`` (``n_max / 5``, ``n_max / 25``) so that the Many group is not empty."""
    if n_max > MANY_SHOT:
        return float(MANY_SHOT), float(FEW_SHOT)
    scale = n_max / CIFAR_N_MAX
    return MANY_SHOT * scale, FEW_SHOT * scale


def shot_groups(class_counts: Sequence[int]) -> list[str]:
    """Each class's group by its training images: "many" (> many_above), "few" (< few_below), else
    "medium", with :func:`shot_thresholds` of the largest count."""
    counts = [int(n) for n in class_counts]
    many, few = shot_thresholds(max(counts))
    return ["many" if n > many else "few" if n < few else "medium" for n in counts]


def top1_metrics(preds: torch.Tensor, labels: torch.Tensor, class_counts: Sequence[int]) -> dict[str, float | None]:
    """Top-1 accuracy of predictions ``preds`` (N,) against ``labels`` (N,): ``top1`` over all test images
    and ``top1_many`` / ``top1_medium`` / ``top1_few``, each the mean per-class accuracy of its group
    (:func:`shot_groups` of ``class_counts``, the training images per class); ``None`` for an empty group."""
    preds, labels = torch.as_tensor(preds).long(), torch.as_tensor(labels).long()
    groups = shot_groups(class_counts)
    correct = (preds == labels).double()
    n_classes = len(groups)
    hits = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, labels, correct)
    seen = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, labels, torch.ones_like(correct))
    out: dict[str, float | None] = {"top1": float(correct.mean())}
    for g in GROUPS:
        members = [c for c in range(n_classes) if groups[c] == g and seen[c] > 0]
        out[f"top1_{g}"] = float((hits[members] / seen[members]).mean()) if members else None
    return out


def classification_metrics(model: torch.nn.Module, dataset, class_counts: Sequence[int], batch_size: int = 256,
                           dev: torch.device | None = None) -> dict[str, float | None]:
    """:func:`top1_metrics` of a classifier network on a dataset: the head's logits on the plain backbone
    features in eval mode (no batch module, as at test time), argmax. Non-finite logits are refused."""
    from .evaluate import _refuse_non_finite, embed_dataset

    logits, _, labels = embed_dataset(model, dataset, batch_size, dev, outputs="head_and_features")
    _refuse_non_finite(logits)
    return top1_metrics(logits.argmax(dim=1), labels, class_counts)


# ------------------------------------------------------------------------------------- the mechanism
def head_tail_coupling(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                       class_counts: Sequence[int]) -> dict[str, float]:
    """Do head-class samples reach tail-class ones through a trained BatchFormer? One batch x (B, 3, H, W),
    y (B,), the network in eval mode (no dropout), groups by :func:`shot_groups` of ``class_counts``:

    * ``attention_few_to_many``: the attention weight a Few-class sample puts on the batch's Many-class
      samples, summed over them, averaged over the first layer's heads and the Few samples;
      ``attention_uniform``: the same under uniform attention, the Many samples' share of the batch.
    * ``grad_many_to_few``: the mean of ‖∂ℓ_i/∂f_j‖ over Many-class samples i and Few-class samples j,
      where ℓ_i is sample i's cross-entropy from the shared classifier on the module's output and f_j
      sample j's backbone feature: the gradient head-class losses send to tail-class features (exactly 0
      without the module). ``grad_self``: the mean ‖∂ℓ_j/∂f_j‖ of the Few samples, for scale.

    The batch must hold at least one Many-class and one Few-class sample (``ValueError`` otherwise).
    """
    import torch.nn.functional as F

    module = getattr(model, "batch_module", None)
    if module is None or not hasattr(module, "layers"):
        raise ValueError("head_tail_coupling needs a network with a BatchFormer (batch_module='batchformer')")
    groups = shot_groups(class_counts)
    kind = [groups[int(c)] for c in y]
    many = [i for i, g in enumerate(kind) if g == "many"]
    few = [i for i, g in enumerate(kind) if g == "few"]
    if not many or not few:
        raise ValueError(f"the batch holds {len(many)} Many-class and {len(few)} Few-class samples: it needs both")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        feats = model.features(x).float()                                     # (B, D)
        attn = module.layers[0].attention_weights(feats).mean(0)              # (B, B), rows sum to 1
    feats.requires_grad_(True)
    losses = F.cross_entropy(model.head(module(feats)), y, reduction="none")  # (B,)
    rows = {i: torch.autograd.grad(losses[i], feats, retain_graph=True)[0].norm(dim=1) for i in set(many) | set(few)}
    model.train(was_training)
    return {"attention_few_to_many": float(attn[few][:, many].sum(1).mean()),
            "attention_uniform": len(many) / len(kind),
            "grad_many_to_few": float(torch.stack([rows[i][few] for i in many]).mean()),
            "grad_self": float(torch.stack([rows[j][j] for j in few]).mean())}


# ------------------------------------------------------------------------------------- the study
#: condition -> (loss, batch module): the study's four cells
CONDITIONS = {"ce": ("cross_entropy", "none"), "ce-batchformer": ("cross_entropy", "batchformer"),
              "bsce": ("balanced_softmax", "none"), "bsce-batchformer": ("balanced_softmax", "batchformer")}
METRICS = ("top1", "top1_many", "top1_medium", "top1_few")


def lt_folder(runs_dir: str | Path, condition: str, seed: int) -> Path:
    """Where :func:`lt_study` trains a run: ``<runs>/glyphs-lt-<condition>-seed<s>``; its shipped history is
    ``published/glyphs-lt-<condition>-seed<s>-imbalance100.json`` (:func:`bgtutorial.experiments.published_stem`)."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    return Path(runs_dir) / f"glyphs-lt-{condition}-seed{seed}"


def lt_study(runs_dir: str | Path = "runs/glyphs-lt", seeds: Sequence[int] = (0,),
             conditions: Sequence[str] = tuple(CONDITIONS), shipped: bool = False, publish: str = "",
             force: bool = False, **overrides: Any) -> dict[str, list[dict[str, Any]]]:
    """``{condition: [history per seed]}``. Each run is trained (or loaded when finished, resumed when
    interrupted) by the one engine; ``shipped=True`` trains nothing and reads the package's shipped
    histories (a missing one raises ``FileNotFoundError`` saying how to make it). ``publish``: the
    command recorded when each finished history is written into ``bgtutorial/published/``.
    Seeds pair the conditions: a seed gives the same batches whatever the loss and module, and every
    run trains and tests on the same split (``data_seed``)."""
    from .config import load_config
    from .experiments import PUBLISHED, _shipped, publish_history, published_stem, run_or_load

    out: dict[str, list[dict[str, Any]]] = {}
    for condition in conditions:
        for seed in seeds:
            folder = lt_folder(runs_dir, condition, seed)
            loss, module = CONDITIONS[condition]
            kw = {"progress": False, **overrides, "seed": seed, "loss": loss, "batch_module": module}
            cfg = load_config("glyphs-lt", out=str(folder), **kw)
            if shipped:
                how = f"train and publish it: python -m bgtutorial.longtail --conditions {condition} --seeds {seed} --publish"
                h = _shipped(cfg, folder, strict=True, publish=how)
            else:
                h = run_or_load("glyphs-lt", folder, force=force, **kw)
                if publish:
                    publish_history(h, published_stem(folder, cfg), publish, dest=PUBLISHED)
            out.setdefault(condition, []).append(h)
    return out


def _final(h: dict[str, Any], metric: str) -> float:
    value = h["epochs"][-1][metric]
    if value is None:
        raise ValueError(f"{metric} is empty in this run (no class in that group): see longtail.shot_thresholds")
    return float(value)


def lt_tables(study: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: each condition's final top-1 (mean ± std over seeds) per group, then the paired
    differences (:func:`bgtutorial.stats.paired_summary`, 95 %): BatchFormer − none for each loss and
    Balanced Softmax − cross-entropy with and without BatchFormer, where both sides have the seeds."""
    from .stats import _cell, paired_summary

    lines = ["| condition | " + " | ".join(f"{m} mean ± std" for m in METRICS) + " | seeds |",
             "|---|" + "---|" * len(METRICS) + "---|"]
    for condition, hs in study.items():
        cells = []
        for m in METRICS:
            vals = [_final(h, m) for h in hs]
            cells.append(f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.3f}")
        lines.append(f"| {condition} | " + " | ".join(cells) + f" | {len(hs)} |")
    pairs = [("ce-batchformer", "ce"), ("bsce-batchformer", "bsce"), ("bsce", "ce"), ("bsce-batchformer", "ce-batchformer")]
    rows = []
    for treat, base in pairs:
        if treat in study and base in study and len(study[base]) >= 2 and len(study[treat]) == len(study[base]):
            cells = [_cell(paired_summary([_final(h, m) for h in study[treat]], [_final(h, m) for h in study[base]]))
                     for m in METRICS]
            rows.append(f"| {treat} − {base} | " + " | ".join(cells) + f" | {len(study[base])} |")
    if rows:
        lines += ["", "| paired by seed | " + " | ".join(f"{m}: mean [95 % t-interval]" for m in METRICS) + " | seeds |",
                  "|---|" + "---|" * len(METRICS) + "---|", *rows]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bgtutorial.longtail", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/glyphs-lt", help="the runs' folder (one subfolder per run)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (a shorter study)")
    p.add_argument("--publish", action="store_true",
                   help="write each finished run's history (no weights, no per-step losses) into bgtutorial/published/")
    p.add_argument("--force", action="store_true", help="retrain runs whose folder holds another config")
    p.add_argument("--shipped", action="store_true", help="train nothing: print the tables from the shipped histories")
    return p


def main(argv: list[str] | None = None) -> int:
    from .utils import run_cli

    a = _parser().parse_args(argv)
    if a.shipped and (a.publish or a.force):
        print("error: --shipped reads the shipped histories and trains nothing: drop --publish and --force",
              file=sys.stderr)
        return 2
    extra = {} if a.epochs is None else {"epochs": a.epochs}
    command = "python -m bgtutorial.longtail " + " ".join(argv if argv is not None else sys.argv[1:])
    study: dict[str, list[dict[str, Any]]] = {}

    def run_all() -> int:
        for seed in a.seeds:              # seed by seed: an interrupted study already holds whole pairs
            for condition in a.conditions:
                h = lt_study(a.runs, (seed,), (condition,), shipped=a.shipped, publish=command if a.publish else "",
                             force=a.force, **extra)[condition][0]
                study.setdefault(condition, []).append(h)
                last = h["epochs"][-1]
                print(f"glyphs-lt {condition} seed {seed}: " + ", ".join(
                    f"{m} {last[m]:.3f}" if last[m] is not None else f"{m} -" for m in METRICS), flush=True)
        print(lt_tables(study))
        return 0

    return run_cli(run_all)


if __name__ == "__main__":
    sys.exit(main())
