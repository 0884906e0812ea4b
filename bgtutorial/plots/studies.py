"""Results over seeds and settings: mean ± standard deviation with every seed as a dot, robustness
curves against a corruption level, an ablated value against the baseline, paired differences with
their intervals.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["seed_spread", "robustness_curves", "ablation_plot", "paired_differences"]


def seed_spread(values: dict[str, dict[str, Sequence[float]]], ylabel: str, title: str = "",
                ax: plt.Axes | None = None, legend: bool = True, chance: float | None = None) -> plt.Figure:
    """Mean ± standard deviation over seeds, with every seed as a dot.

    ``values[group][method]`` holds one number per seed (e.g. final R@1); groups (conditions such as
    "balanced", "long-tailed") go along the x-axis, methods side by side within a group, one
    colour each. The legend (right of the axes; ``legend=False`` leaves it out, e.g. on all but
    one panel) says how many seeds each method has; one seed draws no error bar. ``chance``: the
    metric of a random ranking, drawn as a red dotted line.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.6 + 1.9 * len(values), 3.4))
    fig = ax.figure
    methods = list(dict.fromkeys(m for group in values.values() for m in group))
    width = 0.7 / max(1, max(len(group) for group in values.values()))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, method in enumerate(methods):
        xs, means, stds, n_seeds = [], [], [], set()
        for g, group in enumerate(values.values()):
            if method not in group:
                continue
            v = np.asarray(group[method], dtype=float)
            present = [m for m in methods if m in group]          # centred on the group's tick
            x = g + (present.index(method) - (len(present) - 1) / 2) * width
            ax.scatter(np.full(len(v), x), v, s=12, color=colours[k % len(colours)], alpha=0.45, zorder=2)
            xs.append(x), means.append(v.mean()), stds.append(v.std(ddof=1) if len(v) > 1 else 0.0)
            n_seeds.add(len(v))
        seeds = "/".join(str(n) for n in sorted(n_seeds))
        ax.errorbar(xs, means, yerr=stds, fmt="o", ms=6, capsize=4, color=colours[k % len(colours)], zorder=3,
                    label=f"{method} (mean ± std, {seeds} seed{'s' if seeds != '1' else ''})")
    ax.set_xticks(range(len(values)), list(values), fontsize=8)
    ax.set_xlim(-0.5, len(values) - 0.5)                         # room for the outer groups' labels
    _chance_line(ax, chance)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def robustness_curves(study: dict, metric: str = "R@1", xlabel: str = "share of training labels flipped",
                      title: str | None = None, ax: plt.Axes | None = None, chance: float | None = None,
                      from_zero: bool = True) -> plt.Figure:
    """Final-epoch ``metric`` against the corruption level, one line per method, mean ± std over seeds.

    ``study`` is ``{level: {method: [history per seed]}}`` as ``experiments.robustness_study``
    returns. Error bars are the sample standard deviation over seeds (none with one seed); the
    methods are nudged sideways a little so their bars do not hide each other. The legend names
    each method and its number of seeds. Every level of ``study`` gets a tick. ``chance``: the metric
    of a random ranking, a red dotted line. ``from_zero`` (default) starts the y-axis at 0, so that a
    difference of 0.01 between points reads as the small thing it is, not as a trend.
    """
    levels = sorted(study)
    methods = list(dict.fromkeys(m for lv in levels for m in study[lv]))
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
    fig = ax.figure
    span = (levels[-1] - levels[0]) if len(levels) > 1 else 1.0
    for n, method in enumerate(methods):
        xs, means, stds, seeds = [], [], [], set()
        for lv in levels:
            hs = study[lv].get(method, [])
            if not hs:
                continue
            vals = np.array([h["epochs"][-1][metric] for h in hs], dtype=float)
            xs.append(lv + (n - (len(methods) - 1) / 2) * 0.012 * span)
            means.append(vals.mean())
            stds.append(vals.std(ddof=1) if len(vals) > 1 else 0.0)
            seeds.add(len(vals))
        counts = "/".join(str(c) for c in sorted(seeds))
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, lw=1.5,
                    label=f"{method} ({counts} seed{'s' if seeds != {1} else ''})")
    ax.set_xticks(levels, [f"{lv:g}" for lv in levels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test {metric} (unseen classes)")
    _chance_line(ax, chance)
    ax.set_xlim(levels[0] - 0.15 * span, levels[-1] + 0.15 * span)   # one level: a window around it
    if from_zero:
        ax.set_ylim(0, max(ax.get_ylim()[1] * 1.05, 1e-3))          # headroom: no marker cut at the top
    ax.set_title(title or f"{metric}: mean ± std over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def ablation_plot(results: dict, baseline: Sequence[float] | None = None, xlabel: str = "value",
                  metric: str = "R@1", title: str = "", chance: float | None = None) -> plt.Figure:
    """One metric against an ablated value: ``results[value]`` is the list of final values over seeds.

    Each seed is a dot, the mean ± standard deviation over seeds a bar (a single seed is labelled as
    such, without a bar); ``baseline`` (values over the same seeds, same budget) is drawn as a
    horizontal line with its spread as a band. ``title`` should state the budget (preset, epochs, seeds).
    ``chance``: the metric of a random ranking, a red dotted line.
    """
    keys = list(results)
    xs = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    means = [float(np.mean(results[k])) for k in keys]
    stds = [float(np.std(results[k], ddof=1)) if len(results[k]) > 1 else 0.0 for k in keys]
    n = max(len(v) for v in results.values())
    for x, k in zip(xs, keys):
        ax.scatter([x] * len(results[k]), results[k], s=14, color="tab:blue", alpha=0.5, zorder=3)
    ax.errorbar(xs, means, yerr=stds if n > 1 else None, color="tab:blue", marker="o", capsize=4,
                label=f"mean ± std over {n} seeds" if n > 1 else "seed 0 only")
    if baseline is not None and len(baseline):
        b, bs = float(np.mean(baseline)), float(np.std(baseline, ddof=1)) if len(baseline) > 1 else 0.0
        ax.axhline(b, color="tab:gray", ls="--", label=f"baseline, same budget ({len(baseline)} seed{'s' if len(baseline) > 1 else ''})")
        if bs:
            ax.axhspan(b - bs, b + bs, color="tab:gray", alpha=0.15)
    _chance_line(ax, chance)
    ax.set_xticks(xs, [str(k) for k in keys])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (unseen test classes, last epoch)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def paired_differences(ax: plt.Axes, summaries: dict, title: str = "",
                       ylabel: str = "difference to the baseline,\npaired by seed") -> plt.Axes:
    """The rule's picture: per comparison, its per-seed differences (grey dots), their mean and 95 %
    t-interval (black bar), and 0 as a red dashed line; ``summaries[name]`` is a
    :func:`bgtutorial.stats.paired_summary`. A claim is supported where its bar misses the line."""
    for x, (name, s) in enumerate(summaries.items()):
        ax.scatter([x] * s["n"], s["differences"], color="0.6", s=14, zorder=2, label="one seed" if x == 0 else None)
        ax.errorbar([x], [s["mean"]], yerr=[[s["mean"] - s["low"]], [s["high"] - s["mean"]]], fmt="o", color="black",
                    capsize=5, zorder=3, label="mean, 95 % t-interval" if x == 0 else None)
    ax.axhline(0, color="tab:red", lw=1, ls="--")
    ax.set_xticks(range(len(summaries)), list(summaries), fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax


def _chance_line(ax: plt.Axes, chance: float | None) -> None:
    """A red dotted horizontal line at ``chance`` (nothing for ``None``), labelled for the legend."""
    if chance is not None:
        ax.axhline(chance, color="tab:red", ls=":", lw=1.2, label=f"chance ({chance:.3f})", zorder=1)
