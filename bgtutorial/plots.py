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
           "retrieval_gallery", "embedding_projection", "attention_heatmap", "head_graphs", "class_name",
           "two_stream_diagram", "coupling_maps", "batch_attention", "seed_spread",
           "robustness_curves", "class_circle_layout", "directed_graph", "loss_batch_note",
           "embedding_projections", "poincare_figure", "ablation_plot"]


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
            titles.append(("✓ " if ok else "✗ ") + class_name(dataset, int(labels[j])))   # mark first: a right-to-left
                                                                                             # name cannot move it
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


def attention_heatmap(weights: torch.Tensor, labels: torch.Tensor | None = None, title: str = "attention",
                      names: Sequence[str] | None = None, ax: plt.Axes | None = None,
                      colorbar_label: str = "weight") -> plt.Figure:
    """A (B, B) attention or adjacency matrix: row i = query sample i, column j = key sample j.

    With ``labels`` (B,) the samples are sorted by class (stable), red lines mark the class
    boundaries and the ticks name the classes (``names[label]`` when given, e.g. a dataset's
    ``classes``; with more than 20 classes only the lines). ``ax``: draw into an existing axes.
    """
    w = weights.detach().float().cpu()
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"attention_heatmap expects a (B, B) matrix, got shape {tuple(w.shape)}")
    ys = None
    if labels is not None:
        ys = torch.as_tensor(labels).cpu()
        order = torch.argsort(ys, stable=True)
        w, ys = w[order][:, order], ys[order]
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 3.9))
    fig = ax.figure
    im = ax.imshow(w.numpy(), cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=colorbar_label)
    ax.set_title(title, fontsize=9)
    suffix = " (sorted by class)" if ys is not None else ""
    ax.set_xlabel("key sample j" + suffix, fontsize=8)
    ax.set_ylabel("query sample i" + suffix, fontsize=8)
    if ys is not None:
        _class_axes(ax, ys.numpy())
        if names is not None and len(torch.unique(ys)) <= 20:
            starts = np.flatnonzero(np.r_[True, ys.numpy()[1:] != ys.numpy()[:-1]])
            text = [str(names[int(ys[s])]) for s in starts]
            long = max(len(t) for t in text) > 3
            size = 7 if long else 10                       # single characters (the glyphs) read larger
            ax.set_xticklabels(text, fontsize=size, rotation=35 if long else 0, ha="right" if long else "center")
            ax.set_yticklabels(text, fontsize=size)
    return fig


def _class_axes(ax: plt.Axes, labels: np.ndarray, names: Sequence[str] | None = None) -> None:
    """Class boundaries as lines and class names (``names[label]``, else the ids) at the block centres,
    for a matrix sorted by label."""
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])        # first index of each class
    ends = np.r_[starts[1:], len(labels)]
    for b in starts[1:]:
        ax.axhline(b - 0.5, color="tab:red", lw=0.8)
        ax.axvline(b - 0.5, color="tab:red", lw=0.8)
    if len(starts) <= 20:
        centres = (starts + ends - 1) / 2
        ticks = [str(names[int(labels[s])]) if names is not None else str(int(labels[s])) for s in starts]
        ax.set_xticks(centres, ticks, fontsize=7)
        ax.set_yticks(centres, ticks, fontsize=7)
    else:
        ax.set_xticks([]), ax.set_yticks([])


def head_graphs(attention: torch.Tensor, knn: torch.Tensor, labels: torch.Tensor, max_heads: int = 4,
                title: str = "", names: Sequence[str] | None = None) -> plt.Figure:
    """BGFormer's per-head graphs beside a fixed feature-kNN graph, samples sorted by class.

    ``attention`` (H, B, B): one block's attention weights (``BGFormer(..., return_attention=True)``),
    exactly 0 off each head's top-K; ``knn`` (B, B) bool: e.g. ``visual_graph(LN(x), k)``;
    ``labels`` (B,). First panel: the kNN graph (black = edge); then the first ``max_heads``
    heads, each edge coloured by its weight, non-edges white. Red lines separate the classes
    and each panel's title gives the share of its edges (self-loops left out) that join two
    samples of the same class. Rows are queries i, columns keys j. ``names[label]`` labels the
    classes on the axes (e.g. ``class_name(dataset, c)`` for every class c), else their ids.
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
        _class_axes(ax, ys.numpy(), names)
        ax.set_xlabel("key sample j (class)", fontsize=8)
    axes[0].set_ylabel("query sample i (class)", fontsize=8)
    fig.colorbar(im, ax=list(axes[1:]), shrink=0.85, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


# ------------------------------------------------------------------- notebook 02 (BatchFormer)
def _box(ax: plt.Axes, xy: tuple[float, float], text: str, color: str, width: float = 1.7, height: float = 0.7,
         dashed: bool = False) -> None:
    from matplotlib.patches import FancyBboxPatch

    x, y = xy
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05",
                                fc="white", ec=color, lw=1.6, ls="--" if dashed else "-"))
    ax.text(x, y, text, ha="center", va="center", fontsize=8, color="0.45" if dashed else "black")


def _arrow(ax: plt.Axes, start: tuple[float, float], end: tuple[float, float], color: str, head: bool = True) -> None:
    ax.annotate("", end, start, arrowprops=dict(arrowstyle="-|>" if head else "-", color=color, lw=1.4,
                                                shrinkA=0, shrinkB=0))


def two_stream_diagram(shared_head: bool = True) -> plt.Figure:
    """BatchFormer's training path (top) and test path (bottom), drawn as boxes and arrows.

    Training: the pooled features X (B, D) of a batch go two ways, untouched (the plain stream, blue)
    and through the module M (the module stream, orange); the loss sees both halves of the doubled
    batch. ``shared_head=True`` (the paper's design): one head h and one set of proxies for both
    streams. ``False`` (our ablation): the module stream has its own head h' and proxies P'. Test
    (bottom, green): one image at a time, no module; only h is used, so with ``shared_head=False``
    the module stream's head h' is left behind.
    """
    plain, module, test = "tab:blue", "tab:orange", "tab:green"
    fig, ax = plt.subplots(figsize=(10, 4.6))
    ax.set_xlim(-0.3, 12.6)
    ax.set_ylim(-0.2, 6.4)
    ax.axis("off")
    ax.text(-0.2, 6.2, "training (a batch of B images, labels y)", fontsize=9, weight="bold", va="top")
    ax.text(-0.2, 2.2, "test (one image at a time, no labels)", fontsize=9, weight="bold", va="top")
    ax.axhline(2.4, color="0.8", lw=0.8)
    # training: images -> backbone -> X, then two streams
    _box(ax, (0.8, 4.0), "B images", "0.3", width=1.3)
    _box(ax, (2.8, 4.0), "backbone\n(+ pooling)", "0.3")
    _arrow(ax, (1.45, 4.0), (1.95, 4.0), "0.3")
    ax.plot([3.65, 4.1], [4.0, 4.0], color="0.3", lw=1.4)
    ax.text(3.8, 4.12, "X (B, D)", fontsize=7, ha="right", va="bottom")
    ax.plot([4.1, 4.1, 4.6], [4.0, 5.0, 5.0], color=plain, lw=1.4)       # the plain stream
    ax.plot([4.1, 4.1], [4.0, 3.0], color=module, lw=1.4)                 # the module stream
    _box(ax, (5.7, 3.0), "BatchFormer M\n(attention over\nthe batch)", module, height=0.95)
    _arrow(ax, (4.1, 3.0), (4.85, 3.0), module)
    if shared_head:
        _box(ax, (8.4, 4.0), "shared head h\n(D → E, L2)", "0.2", height=0.8)
        ax.plot([4.6, 7.0], [5.0, 5.0], color=plain, lw=1.4)
        _arrow(ax, (7.0, 5.0), (7.8, 4.4), plain)
        ax.text(5.8, 5.08, "plain half: X, untouched", fontsize=7, color=plain, ha="center", va="bottom")
        ax.plot([6.55, 7.0], [3.0, 3.0], color=module, lw=1.4)
        _arrow(ax, (7.0, 3.0), (7.8, 3.6), module)
        ax.text(7.05, 2.85, "module half: M(X)", fontsize=7, color=module, ha="left", va="top")
        _box(ax, (11.2, 4.0), "one loss on 2B rows\nℓ(h([X; M(X)]), [y; y])\nproxies P", "0.2", width=2.5,
             height=1.05)
        _arrow(ax, (9.25, 4.0), (9.95, 4.0), "0.2")
    else:
        _box(ax, (8.4, 5.0), "head h\n(D → E, L2)", plain, height=0.8)
        _box(ax, (8.4, 3.0), "module head h'\n(D → E, L2)", module, height=0.8)
        _arrow(ax, (4.6, 5.0), (7.55, 5.0), plain)
        ax.text(5.8, 5.08, "plain half: X, untouched", fontsize=7, color=plain, ha="center", va="bottom")
        _arrow(ax, (6.55, 3.0), (7.55, 3.0), module)
        ax.text(7.05, 3.08, "M(X)", fontsize=7, color=module, ha="center", va="bottom")
        _box(ax, (11.2, 5.0), "ℓ(h(X), y)\nproxies P", plain, width=2.3, height=0.8)
        _box(ax, (11.2, 3.0), "ℓ'(h'(M(X)), y)\nown proxies P'", module, width=2.3, height=0.8)
        _arrow(ax, (9.25, 5.0), (10.05, 5.0), plain)
        _arrow(ax, (9.25, 3.0), (10.05, 3.0), module)
        ax.text(11.2, 4.0, "loss = ½ ℓ + ½ ℓ'", ha="center", va="center", fontsize=8)
    # test: image -> backbone -> h -> embedding; the module (and h') are not used
    y = 0.8
    _box(ax, (0.8, y), "1 image", "0.3", width=1.3)
    _box(ax, (2.8, y), "backbone\n(+ pooling)", test)
    _arrow(ax, (1.45, y), (1.95, y), test)
    _box(ax, (5.7, 1.6), "M: dropped at test", "0.6", width=1.9, height=0.45, dashed=True)
    _box(ax, (8.4, y), "head h\n(the trained one)", test, height=0.8)
    _arrow(ax, (3.65, y), (7.55, y), test)
    ax.text(5.7, y - 0.12, "x (1, D): never went through M", fontsize=7, color=test, ha="center", va="top")
    _box(ax, (11.2, y), "embedding (E)\n→ nearest neighbours", test, width=2.3)
    _arrow(ax, (9.25, y), (10.05, y), test)
    if not shared_head:
        ax.text(8.4, 0.05, "h' is left behind: it only ever saw M(X)", ha="center", fontsize=7, color=module)
    ax.set_title("BatchFormer, " + ("shared head (the paper's design)" if shared_head
                                     else "unshared head (our ablation)"), fontsize=10)
    fig.tight_layout()
    return fig


def _sorted_by_label(matrix: torch.Tensor, labels) -> tuple[np.ndarray, np.ndarray]:
    y = torch.as_tensor(labels).cpu()
    order = torch.argsort(y, stable=True)
    return matrix.detach().float().cpu()[order][:, order].numpy(), y[order].numpy()


def _name_ticks(ax: plt.Axes, labels: np.ndarray, names: Sequence[str] | None, max_classes: int = 40) -> None:
    """Class names (or numbers) at the class blocks' centres of a matrix sorted by label."""
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    ends = np.r_[starts[1:], len(labels)]
    if len(starts) > max_classes:
        return
    centres = (starts + ends - 1) / 2
    text = [str(names[int(labels[s])]) if names is not None else str(int(labels[s])) for s in starts]
    size = 7 if len(starts) <= 20 else 5
    long = max(len(t) for t in text) > 3
    ax.set_xticks(centres, text, fontsize=size, rotation=60 if long else 0, ha="right" if long else "center")
    ax.set_yticks(centres, text, fontsize=size)


def coupling_maps(maps: dict[str, torch.Tensor], labels, names: Sequence[str] | None = None,
                  title: str = "") -> plt.Figure:
    """Side-by-side (B, B) maps of how much one sample's loss depends on another sample's feature.

    ``maps[name][i, j]`` = ``‖∂ℓ_i / ∂x_j‖`` (e.g. with and without the batch module); samples are
    sorted by label, red lines separate the classes, ticks name them (``names[label]``). Exact
    zeros are white; the rest share one logarithmic colour scale. Each title gives the share of
    off-diagonal entries (i ≠ j) that are exactly zero.
    """
    from matplotlib.colors import LogNorm

    sorted_maps = {k: _sorted_by_label(v, labels) for k, v in maps.items()}
    positive = np.concatenate([m[m > 0] for m, _ in sorted_maps.values()])
    vmin, vmax = (float(positive.min()), float(positive.max())) if positive.size else (1e-8, 1.0)
    fig, axes = plt.subplots(1, len(maps), figsize=(4.3 * len(maps) + 0.9, 4.2), squeeze=False,
                             layout="constrained")
    im = None
    for ax, (name, (m, ys)) in zip(axes[0], sorted_maps.items()):
        off = ~np.eye(len(m), dtype=bool)
        zero_share = float((m[off] == 0).mean())
        im = ax.imshow(np.ma.masked_equal(m, 0.0), cmap="viridis", norm=LogNorm(vmin, max(vmax, vmin * 10)),
                       interpolation="nearest")
        _class_axes(ax, ys)
        _name_ticks(ax, ys, names)
        ax.set_title(f"{name}\n{zero_share:.0%} of the off-diagonal entries exactly 0", fontsize=9)
        ax.set_xlabel("sample j whose feature x_j moves (class)", fontsize=8)
        ax.set_ylabel("sample i whose loss ℓ_i is measured (class)", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.85, label="‖∂ℓ_i / ∂x_j‖ (white: exactly 0)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def batch_attention(weights: torch.Tensor, labels, images: Sequence[torch.Tensor] | None = None,
                    names: Sequence[str] | None = None, title: str = "attention") -> plt.Figure:
    """A (B, B) attention matrix of a real batch beside the batch's images.

    Samples are sorted by label; red lines separate the classes and ticks name them (``names``).
    With ``images`` (B of them, (3, H, W), in batch order), each class's images are drawn left of
    the matrix on the rows of its block, as squares as tall as the block, so the reader sees
    which images attend to which. ``ax.images[0]`` is the matrix, the thumbnails follow.
    """
    w, ys = _sorted_by_label(torch.as_tensor(weights), labels)
    B = len(ys)
    order = torch.argsort(torch.as_tensor(labels).cpu(), stable=True).tolist()
    starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
    ends = np.r_[starts[1:], B]
    sizes = ends - starts
    strip = int((sizes * sizes).max()) if images is not None else 0        # data units left of the matrix
    gap = 0.03 * B if images is not None else 0.0
    side = min(11.0, max(4.5, B / 12))                                     # inches: a 120-batch gets 10
    fig, ax = plt.subplots(figsize=(side * (B + strip + gap) / B + 1.6, side), layout="constrained")
    im = ax.imshow(w, cmap="viridis", interpolation="nearest", extent=(-0.5, B - 0.5, B - 0.5, -0.5))
    if images is not None:
        left = -0.5 - gap - strip
        for s, e in zip(starts, ends):
            size = e - s                                                    # a square as tall as the class block
            for k, pos in enumerate(range(s, e)):
                x0 = left + k * size
                ax.imshow(to_display(images[order[pos]]), extent=(x0, x0 + size, e - 0.5, s - 0.5),
                          interpolation="nearest")
        ax.set_xlim(left, B - 0.5)
    ax.set_ylim(B - 0.5, -0.5)
    _class_axes(ax, ys)
    _name_ticks(ax, ys, names)
    ax.set_xlabel("key sample j, whose feature is borrowed (class)", fontsize=8)
    ax.set_ylabel("query sample i (class)", fontsize=8)
    ax.set_title(title + ("\n(left: the batch's images, each class on the rows of its block)" if images is not None else ""),
                 fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="attention weight")
    return fig


def seed_spread(values: dict[str, dict[str, Sequence[float]]], ylabel: str, title: str = "",
                ax: plt.Axes | None = None, legend: bool = True) -> plt.Figure:
    """Mean ± standard deviation over seeds, with every seed as a dot.

    ``values[group][method]`` holds one number per seed (e.g. final R@1); groups (conditions such as
    "balanced", "long-tailed") go along the x-axis, methods side by side within a group, one
    colour each. The legend (right of the axes; ``legend=False`` leaves it out, e.g. on all but
    one panel) says how many seeds each method has; one seed draws no error bar.
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
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def robustness_curves(study: dict, metric: str = "R@1", xlabel: str = "share of training labels flipped",
                      title: str | None = None, ax: plt.Axes | None = None) -> plt.Figure:
    """Final-epoch ``metric`` against the corruption level, one line per method, mean ± std over seeds.

    ``study`` is ``{level: {method: [history per seed]}}`` as ``experiments.robustness_study``
    returns. Error bars are the sample standard deviation over seeds (none with one seed); the
    methods are nudged sideways a little so their bars do not hide each other. The legend names
    each method and its number of seeds.
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
    ax.set_title(title or f"{metric}: mean ± std over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def class_circle_layout(labels: torch.Tensor) -> np.ndarray:
    """2-D positions (B, 2) on a circle, samples sorted by class so each class is an arc."""
    y = np.asarray(torch.as_tensor(labels).cpu())
    order = np.argsort(y, kind="stable")
    angle = np.empty(len(y))
    angle[order] = 2 * np.pi * np.arange(len(y)) / len(y)
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def directed_graph(adj: torch.Tensor, labels: torch.Tensor, positions: np.ndarray | None = None,
                   images: Sequence[torch.Tensor] | None = None, names: Sequence[str] | None = None,
                   title: str = "directed kNN graph", thumb_px: int = 36, ax: plt.Axes | None = None) -> plt.Figure:
    """A directed graph over a batch: an arrow i → j for every edge ``adj[i, j]`` (i ≠ j), "i keeps j".

    ``adj`` (B, B) bool, row i the samples node i draws from (a kNN graph is directed: i keeping j
    does not make j keep i). One-way edges are black arrows; mutual pairs (i keeps j *and* j keeps
    i) one blue double-headed arrow. Nodes sit at ``positions`` (B, 2) (default
    :func:`class_circle_layout`), drawn as thumbnails of ``images`` ((3, H, W) each, ``thumb_px``
    pixels wide) framed in their class colour, or as coloured dots; the legend names the classes
    (``names[label]`` when given). Self-loops are not drawn.
    """
    from matplotlib.lines import Line2D
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    a = torch.as_tensor(adj).detach().cpu().bool().numpy()
    y = np.asarray(torch.as_tensor(labels).cpu())
    pos = class_circle_layout(labels) if positions is None else np.asarray(positions, dtype=float)
    b = len(y)
    if a.shape != (b, b) or pos.shape != (b, 2):
        raise ValueError(f"adj must be (B, B) and positions (B, 2) for B = {b} labels, got {a.shape} and {pos.shape}")
    classes = list(dict.fromkeys(int(c) for c in y[np.argsort(y, kind="stable")]))
    colour = {c: plt.cm.tab10(i % 10) for i, c in enumerate(classes)}
    if ax is None:
        side = min(12.0, max(7.0, 0.5 * b))                   # room between neighbouring thumbnails
        fig, ax = plt.subplots(figsize=(side + 2.5, side))
    fig = ax.figure
    gap = thumb_px * 0.62 + 3 if images is not None else 6     # arrows stop at the node's frame (points)
    one_way = mutual = 0
    for i in range(b):
        for j in range(b):
            if i == j or not a[i, j]:
                continue
            both = bool(a[j, i])
            if both and j < i:
                continue                                        # drawn once, from the lower index
            ax.annotate("", xy=pos[j], xytext=pos[i], zorder=1,
                        arrowprops=dict(arrowstyle="<|-|>" if both else "-|>", color="tab:blue" if both else "black",
                                        lw=1.2 if both else 0.9, alpha=0.75, shrinkA=gap, shrinkB=gap,
                                        mutation_scale=11))
            mutual += both
            one_way += not both
    if images is not None:
        for i in range(b):
            img = to_display(images[i])
            box = AnnotationBbox(OffsetImage(img, zoom=thumb_px / img.shape[1]), pos[i], zorder=2, pad=0.15,
                                 bboxprops=dict(edgecolor=colour[int(y[i])], lw=2.5))
            ax.add_artist(box)
    else:
        ax.scatter(pos[:, 0], pos[:, 1], c=[colour[int(c)] for c in y], s=80, zorder=2, edgecolors="black")
    pad = 0.12 * max(np.ptp(pos[:, 0]), np.ptp(pos[:, 1]), 1e-9)
    ax.set_xlim(pos[:, 0].min() - pad, pos[:, 0].max() + pad)
    ax.set_ylim(pos[:, 1].min() - pad, pos[:, 1].max() + pad)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_aspect("equal", adjustable="box")
    handles = [Line2D([], [], marker="s", ls="", color=colour[c], markersize=9,
                      label=f"class {names[c] if names is not None else c}") for c in classes[:10]]
    handles += [Line2D([], [], color="black", ls="", marker=r"$\rightarrow$", markersize=14,
                       label=f"i → j: i keeps j, j not i ({one_way})"),
                Line2D([], [], color="tab:blue", ls="", marker=r"$\leftrightarrow$", markersize=14,
                       label=f"i ↔ j: mutual ({mutual} pairs)")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title, fontsize=10)
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
