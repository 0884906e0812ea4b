"""Training curves of a run's history: the loss per step and per epoch, the metrics per epoch.

A loss over a doubled batch (BatchFormer, BGFormer) is not the same quantity as a baseline's loss
over B samples, so runs share only the metric panels (:func:`compare_histories`); each loss panel
says what its loss is computed on (:func:`loss_batch_note`).
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_history", "compare_histories", "loss_batch_note"]


def plot_history(history: dict, metrics: Sequence[str] = ("R@1", "MAP@R"), label: str | None = None,
                 axes: Sequence[plt.Axes] | None = None) -> plt.Figure:
    """One run: the training loss per step with its per-epoch mean (first panel, its title says what the
    loss is computed on: B plain samples, or the doubled batch of a batch module), then each metric per
    epoch on the unseen test classes (epoch 0 = before training). Train and eval curves are labelled.

    To set several runs side by side use :func:`compare_histories`: it never draws two runs' losses on
    one panel, because a loss over a doubled batch (BatchFormer, BGFormer) is not the same quantity as a
    baseline's loss over B samples.
    """
    if axes is None:
        fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.2 * (1 + len(metrics)), 3.2))
    fig = axes[0].figure
    _loss_panel(axes[0], history, f"{label}: training loss" if label else "training loss")
    for ax, m in zip(axes[1:], metrics):
        _metric_panel(ax, history, m, label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def compare_histories(histories: dict[str, dict], metrics: Sequence[str] = ("R@1", "MAP@R"),
                      with_loss: bool = False, title: str = "") -> plt.Figure:
    """Several runs' evaluation curves on shared axes, one colour per run (legend: the run's name).

    Only the retrieval metrics share a panel: they are computed the same way for every method, on
    the test-time network. The training losses are not comparable across methods (a batch module
    trains the loss on 2B samples, the baseline on B), so with ``with_loss=True`` each run gets its
    *own* loss panel in a second row, titled with its name and what its loss is computed on.
    """
    n = len(metrics)
    rows = 2 if with_loss else 1
    cols = max(n, len(histories) if with_loss else 0)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, h) in enumerate(histories.items()):
        for ax, m in zip(axes[0], metrics):
            _metric_panel(ax, h, m, name, colors[i % len(colors)])
    for ax in axes[0][:n]:
        ax.set_title(f"{ax.get_title()}, unseen test classes", fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes[0][n:]:
        ax.axis("off")
    if with_loss:
        for ax, (name, h) in zip(axes[1], histories.items()):
            _loss_panel(ax, h, f"{name}: training loss")
        for ax in axes[1][len(histories):]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---- helpers of plot_history / compare_histories: what a loss is computed on, one panel each
def loss_batch_note(history: dict) -> str:
    """What a run's training loss is computed on, from its config: ``"B=120 plain samples"`` for the
    baseline, ``"2B=240 samples: B plain + B through the batchformer"`` for a batch module (the doubled
    batch of docs/method.md, section 1), with the plain-half weight when the halves are weighted apart."""
    cfg = history.get("config") or {}
    b = cfg.get("batch_size")
    module = cfg.get("batch_module", "none")
    if module in (None, "none"):
        return f"B={b} plain samples" if b else "one plain batch"
    note = f"2B={2 * b} samples: B plain + B through the {module}" if b else f"doubled batch (plain + {module})"
    alpha = cfg.get("plain_weight", -1.0)
    if cfg.get("loss") == "hyperbolic" and (alpha is None or alpha < 0):
        alpha = 0.5                      # MetricLoss scores the hyperbolic loss's halves apart, equally
    if alpha is not None and alpha >= 0:
        note += f", weighted {alpha:g} : {1 - alpha:g}"
    return note


def _loss_panel(ax: plt.Axes, history: dict, title: str = "training loss") -> None:
    """Loss per step (faint) and its per-epoch mean (line with markers) of one run on ``ax``."""
    steps = history["steps"]
    if steps:
        ax.plot([s["loss"] for s in steps], alpha=0.35, color="tab:gray", label="train loss per step")
        ends = np.cumsum([sum(1 for s in steps if s.get("epoch") == e["epoch"] - 1) for e in history["epochs"]])
        means = [e["loss"] for e in history["epochs"] if "loss" in e]
        if len(means) == len(ends) and all("epoch" in s for s in steps):
            ax.plot(ends - 1, means, marker=".", color="black", label="train loss, epoch mean")
            plain = [e.get("loss_plain") for e in history["epochs"]]
            if all(v is not None for v in plain):   # a batch module was on: the plain half alone
                ax.plot(ends - 1, plain, marker=".", ls="--", color="tab:blue",
                        label="plain half alone (used at test time), epoch mean")
        ax.legend(fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    import textwrap

    ax.set_title(f"{title}\n" + textwrap.fill(f"(on {loss_batch_note(history)})", 44), fontsize=9)


def _metric_panel(ax: plt.Axes, history: dict, metric: str, label: str | None = None, color=None) -> None:
    """``metric`` per evaluated epoch (epoch 0 = before training) on the unseen test classes, and on the
    held-out validation classes when the run kept some (``val_classes``), each curve labelled."""
    evaluated = [e for e in history["epochs"] if metric in e]      # eval_every > 1 skips some epochs
    epochs = [0] + [e["epoch"] for e in evaluated]
    name = f"{label}: " if label else ""
    line, = ax.plot(epochs, [history["initial"][metric]] + [e[metric] for e in evaluated], marker="o",
                    color=color, label=f"{name}eval, unseen test classes")
    val = [e for e in history["epochs"] if metric in e.get("val", {})]
    if val and metric in history.get("initial_val", {}):
        ax.plot([0] + [e["epoch"] for e in val], [history["initial_val"][metric]] + [e["val"][metric] for e in val],
                marker="s", ls="--", color=line.get_color(), label=f"{name}eval, held-out train classes")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} (evaluation)", fontsize=9)
