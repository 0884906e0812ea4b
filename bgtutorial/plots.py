"""Figures used by the notebooks and the demo (matplotlib, PNG-friendly)."""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import rearrange

from .data.cub import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["to_display", "image_grid", "class_balance", "plot_history", "compare_histories",
           "retrieval_gallery", "embedding_projection", "attention_heatmap", "head_graphs", "class_name"]


def to_display(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor, ImageNet-normalised or in [0, 1] -> (H, W, 3) array in [0, 1]."""
    img = img.detach().float().cpu()
    if img.min() < 0 or img.max() > 1:   # undo ImageNet normalisation
        img = img * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    return rearrange(img.clamp(0, 1), "c h w -> h w c").numpy()


def image_grid(images: Sequence[torch.Tensor], titles: Sequence[str] | None = None, ncols: int = 8,
               size: float = 1.6, borders: Sequence[str | None] | None = None) -> plt.Figure:
    """Images (3, H, W) in a grid, optional titles and coloured borders."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, img in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(to_display(img))
        if titles:
            ax.set_title(titles[i], fontsize=7)
        if borders and borders[i]:
            ax.axis("on")
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(borders[i])
                spine.set_linewidth(3)
    fig.tight_layout()
    return fig


def class_balance(labels: Sequence[int], title: str = "images per class") -> plt.Figure:
    """Bar chart of the number of samples of each class."""
    counts = Counter(int(v) for v in labels)
    keys = sorted(counts)
    fig, ax = plt.subplots(figsize=(7, 2.5))
    ax.bar(keys, [counts[k] for k in keys], width=1.0)
    ax.set_xlabel("label")
    ax.set_ylabel("images")
    ax.set_title(title)
    fig.tight_layout()
    return fig


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


def class_name(dataset, label: int, width: int = 16) -> str:
    """A short display name of class ``label``: the dataset's ``classes`` entry when it has one (a
    character for the glyphs, ``Laysan Albatross`` for CUB's ``002.Laysan_Albatross``), else the number."""
    names = getattr(dataset, "classes", None)
    if not names or not 0 <= label < len(names):
        return str(label)
    name = str(names[label])
    if "." in name and name.split(".", 1)[0].isdigit():
        name = name.split(".", 1)[1]
    name = name.replace("_", " ")
    return name if len(name) <= width else name[: width - 1] + "…"


def retrieval_gallery(dataset, embeddings: torch.Tensor, labels: torch.Tensor, queries: Sequence[int],
                      k: int = 5) -> plt.Figure:
    """Each query (left, blue) and its k nearest neighbours, green when right, red when wrong;
    titles name the classes (:func:`class_name`)."""
    from .metrics import knn

    nn_idx = knn(embeddings, k)
    images, titles, borders = [], [], []
    for q in queries:
        images.append(dataset[q][0])
        titles.append(f"query {class_name(dataset, int(labels[q]))}")
        borders.append("tab:blue")
        for j in nn_idx[q].tolist():
            images.append(dataset[j][0])
            ok = int(labels[j]) == int(labels[q])
            titles.append(class_name(dataset, int(labels[j])) + (" ✓" if ok else " ✗"))
            borders.append("tab:green" if ok else "tab:red")
    return image_grid(images, titles, ncols=k + 1, borders=borders)


def embedding_projection(embeddings: torch.Tensor, labels: torch.Tensor, method: str = "pca",
                         title: str = "", names: Sequence[str] | None = None) -> plt.Figure:
    """2-D projection of embeddings coloured by class: PCA (fast) or t-SNE (scikit-learn).

    ``names[label]`` (e.g. a dataset's ``classes``) labels the legend (10 classes or fewer) or, for
    more classes, is written at each class's centre, so the glyphs' characters show where they land.
    """
    x = embeddings.detach().float().cpu()
    if method == "pca":
        x = x - x.mean(0)
        _, _, v = torch.pca_lowrank(x, q=2, center=False)
        xy = (x @ v[:, :2]).numpy()
    elif method == "tsne":
        from sklearn.manifold import TSNE
        xy = TSNE(2, init="pca", random_state=0, perplexity=min(30, len(x) - 1)).fit_transform(x.numpy())
    else:
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    fig, ax = plt.subplots(figsize=(4.5, 4))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(labels), cmap="tab20", s=6)
    ax.set_title(title or f"test embeddings ({method.upper()})")
    ax.set_xticks([]), ax.set_yticks([])
    present = np.unique(np.asarray(labels))
    if len(present) <= 10:
        handles, texts = sc.legend_elements()
        if names is not None:
            texts = [str(names[int(c)]) for c in present]
        ax.legend(handles, texts, fontsize=7, loc="best")
    elif names is not None:
        y = np.asarray(labels)
        for c in present:
            cx, cy = xy[y == c].mean(0)
            ax.annotate(str(names[int(c)]), (cx, cy), fontsize=8, ha="center", va="center",
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.6))
    fig.tight_layout()
    return fig


def attention_heatmap(weights: torch.Tensor, labels: torch.Tensor | None = None, title: str = "attention") -> plt.Figure:
    """A (B, B) attention or adjacency matrix, samples sorted by label so class blocks show."""
    w = weights.detach().float().cpu()
    if labels is not None:
        order = torch.argsort(torch.as_tensor(labels), stable=True)
        w = w[order][:, order]
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(w.numpy(), cmap="viridis")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    ax.set_xlabel("key sample")
    ax.set_ylabel("query sample")
    fig.tight_layout()
    return fig


def _class_axes(ax: plt.Axes, labels: np.ndarray) -> None:
    """Class boundaries as lines and class ids at the block centres, for a matrix sorted by label."""
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])        # first index of each class
    ends = np.r_[starts[1:], len(labels)]
    for b in starts[1:]:
        ax.axhline(b - 0.5, color="tab:red", lw=0.8)
        ax.axvline(b - 0.5, color="tab:red", lw=0.8)
    if len(starts) <= 20:
        centres = (starts + ends - 1) / 2
        ax.set_xticks(centres, [str(int(labels[s])) for s in starts], fontsize=7)
        ax.set_yticks(centres, [str(int(labels[s])) for s in starts], fontsize=7)
    else:
        ax.set_xticks([]), ax.set_yticks([])


def head_graphs(attention: torch.Tensor, knn: torch.Tensor, labels: torch.Tensor, max_heads: int = 4,
                title: str = "") -> plt.Figure:
    """BGFormer's per-head graphs beside a fixed feature-kNN graph, samples sorted by class.

    ``attention`` (H, B, B): one block's attention weights (``BGFormer(..., return_attention=True)``),
    exactly 0 off each head's top-K; ``knn`` (B, B) bool: e.g. ``visual_graph(LN(x), k)``;
    ``labels`` (B,). First panel: the kNN graph (black = edge); then the first ``max_heads``
    heads, each edge coloured by its weight, non-edges white. Red lines separate the classes
    and each panel's title gives the share of its edges (self-loops left out) that join two
    samples of the same class. Rows are queries i, columns keys j.
    """
    from .graph import same_label_share

    y = torch.as_tensor(labels).cpu()
    order = torch.argsort(y, stable=True)
    att = attention.detach().float().cpu()[:, order][:, :, order]          # (H, B, B), sorted by class
    adj = knn.detach().cpu()[order][:, order]                                # (B, B)
    ys = y[order]
    heads = min(max_heads, att.shape[0])
    fig, axes = plt.subplots(1, heads + 1, figsize=(2.6 * (heads + 1) + 0.8, 3.2), squeeze=False,
                             layout="constrained")
    axes = axes[0]
    axes[0].imshow(adj.float().numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title(f"feature kNN, k={int(adj.sum(1).max())}\n"
                      f"{float(same_label_share(adj, ys)):.0%} same-class edges", fontsize=8)
    vmax = float(att[:heads].max())
    for h in range(heads):
        w = np.ma.masked_equal(att[h].numpy(), 0.0)
        im = axes[h + 1].imshow(w, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        kept = int((att[h] != 0).sum(1).max())
        axes[h + 1].set_title(f"head {h}: top-{kept} of its logits\n"
                              f"{float(same_label_share(att[h], ys)):.0%} same-class edges", fontsize=8)
    for ax in axes:
        _class_axes(ax, ys.numpy())
        ax.set_xlabel("key sample j (class)", fontsize=8)
    axes[0].set_ylabel("query sample i (class)", fontsize=8)
    fig.colorbar(im, ax=list(axes[1:]), shrink=0.85, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=9)
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


def embedding_projections(panels: dict[str, tuple[torch.Tensor, torch.Tensor]], names: Sequence[str] | None = None,
                          method: str = "pca", suptitle: str = "") -> plt.Figure:
    """Several 2-D projections side by side, one panel per ``{title: (embeddings (N, E), labels (N,))}``.

    Each panel is projected on its own (PCA, or t-SNE with ``method="tsne"``); a class keeps its
    colour in every panel, and one legend names the classes (``names[label]``, e.g. a dataset's
    ``classes``). Meant for a few classes (up to 20): with many more no colour can be told apart.
    """
    labels_all = sorted({int(v) for _, y in panels.values() for v in np.asarray(y)})
    cmap = plt.get_cmap("tab10" if len(labels_all) <= 10 else "tab20")
    colour = {c: cmap(i % cmap.N) for i, c in enumerate(labels_all)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels) + 1.6, 4.2), squeeze=False)
    for ax, (title, (emb, y)) in zip(axes[0], panels.items()):
        x = torch.as_tensor(emb).detach().float().cpu()                  # (N, E)
        if method == "pca":
            x = x - x.mean(0)
            _, _, v = torch.pca_lowrank(x, q=2, center=False)
            xy = (x @ v[:, :2]).numpy()                                  # (N, 2)
        elif method == "tsne":
            from sklearn.manifold import TSNE
            xy = TSNE(2, init="pca", random_state=0, perplexity=min(30, len(x) - 1)).fit_transform(x.numpy())
        else:
            raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
        yy = np.asarray(y)
        for c in labels_all:
            sel = yy == c
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=9, color=colour[c],
                           label=str(names[c]) if names is not None else str(c))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{method.upper()} 1"), ax.set_ylabel(f"{method.upper()} 2")
        ax.set_xticks([]), ax.set_yticks([])
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="class", markerscale=1.5)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def poincare_figure(c: float = 0.1, clip_r: float | None = 2.3, n: int = 400, spread: float = 2.0,
                    anchor: Sequence[float] = (1.2, 0.6), seed: int = 0) -> plt.Figure:
    """Hyp-ViT's map into the Poincaré ball, in two panels (docs/method.md, Hyp-ViT).

    Left: the norm of ``exp_0(v)`` against ``|v|`` (it saturates at the ball's radius 1/√c) and its
    slope ``sech²(√c|v|)``, which vanishes, with the clip radius ``clip_r``. Right: the ball of
    curvature -c (radius 1/√c); ``n`` Gaussian 2-D vectors (std ``spread``) mapped without clipping
    (grey) and with clipping (blue, inside the dashed image of the clip radius); contours of the
    geodesic distance from ``anchor`` (a Euclidean vector, mapped the same way, star).
    """
    from .losses import poincare_distance, to_poincare

    sc = c ** 0.5
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.3))
    r = np.linspace(0, 4 / sc, 400)
    ax1.plot(r, np.tanh(sc * r) / sc, color="tab:blue", label=r"$|\exp_0(v)|$ (left axis)")
    ax1.axhline(1 / sc, color="black", lw=0.8, ls=":", label=r"ball radius $1/\sqrt{c}$")
    ax1.set_xlabel(r"Euclidean norm $|v|$ of the head's output")
    ax1.set_ylabel("norm in the ball")
    slope = ax1.twinx()
    slope.plot(r, 1 / np.cosh(sc * r) ** 2, color="tab:red", ls="--", label=r"slope $\mathrm{sech}^2(\sqrt{c}|v|)$")
    slope.set_ylabel("slope (right axis)", color="tab:red")
    slope.set_ylim(0, 1.05)
    if clip_r is not None:
        ax1.axvline(clip_r, color="tab:green", lw=1.5, label=f"clip radius r={clip_r:g}")
    lines = ax1.get_legend_handles_labels()[0] + slope.get_legend_handles_labels()[0]
    ax1.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="center right")
    ax1.set_title(f"the exponential map saturates (c={c:g})", fontsize=9)

    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 2, generator=g, dtype=torch.float64) * spread                    # (n, 2)
    free = to_poincare(v, c, None)                                                       # (n, 2)
    clipped = to_poincare(v, c, clip_r)                                                  # (n, 2)
    a = to_poincare(torch.tensor([list(anchor)], dtype=torch.float64), c, clip_r)        # (1, 2)
    lim = 1.05 / sc
    xs = np.linspace(-lim, lim, 240)
    gx, gy = np.meshgrid(xs, xs)
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1))                           # (G, 2)
    inside = (grid.pow(2).sum(1) < (0.999 / sc) ** 2)
    d = torch.full((grid.shape[0],), float("nan"), dtype=torch.float64)
    d[inside] = poincare_distance(a, grid[inside], c)[0]
    cs = ax2.contour(gx, gy, d.reshape(gx.shape).numpy(), levels=np.arange(1, 9, 1.0), cmap="viridis",
                     linewidths=0.8)
    ax2.clabel(cs, fontsize=6, fmt="%g")
    ax2.add_patch(plt.Circle((0, 0), 1 / sc, fill=False, color="black", lw=1.2))
    ax2.scatter(free[:, 0], free[:, 1], s=5, color="0.6", label="exp map, no clipping")
    ax2.scatter(clipped[:, 0], clipped[:, 1], s=5, color="tab:blue", label=f"clipped to |v|≤{clip_r:g}, then exp map")
    if clip_r is not None:
        ax2.add_patch(plt.Circle((0, 0), np.tanh(sc * clip_r) / sc, fill=False, ls="--", color="tab:green",
                                 lw=1.2, label="image of the clip radius"))
    ax2.scatter(a[:, 0], a[:, 1], marker="*", s=140, color="tab:red", zorder=4, label="anchor point")
    ax2.set_xlim(-lim, lim), ax2.set_ylim(-lim, lim)
    ax2.set_aspect("equal")
    ax2.set_xticks([]), ax2.set_yticks([])
    ax2.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.0, 0.0))
    ax2.set_title(f"Poincaré ball, c={c:g} (radius {1 / sc:.2f})\ncontours: geodesic distance $d_c$ to the star",
                  fontsize=9)
    fig.tight_layout()
    return fig


def ablation_plot(results: dict, baseline: Sequence[float] | None = None, xlabel: str = "value",
                  metric: str = "R@1", title: str = "") -> plt.Figure:
    """One metric against an ablated value: ``results[value]`` is the list of final values over seeds.

    Each seed is a dot, the mean ± standard deviation over seeds a bar (a single seed is labelled as
    such, without a bar); ``baseline`` (values over the same seeds, same budget) is drawn as a
    horizontal line with its spread as a band. ``title`` should state the budget (preset, epochs, seeds).
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
    ax.set_xticks(xs, [str(k) for k in keys])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (unseen test classes, last epoch)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
