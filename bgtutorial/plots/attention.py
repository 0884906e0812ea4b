"""Inside a batch: (B, B) attention and coupling maps sorted by class, BGFormer's per-head graphs,
and a batch's directed kNN graph drawn as arrows between its images.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .images import to_display

__all__ = ["attention_heatmap", "head_graphs", "coupling_maps", "batch_attention", "class_circle_layout", "directed_graph"]


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
    from ..graph import same_label_share

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
