"""What retrieval looks like: a query and its nearest neighbours, and 2-D projections of the embeddings."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .images import class_name, image_grid

__all__ = ["retrieval_gallery", "embedding_projection", "embedding_projections"]


def retrieval_gallery(dataset, embeddings: torch.Tensor, labels: torch.Tensor, queries: Sequence[int],
                      k: int = 5) -> plt.Figure:
    """Each query (left, blue) and its k nearest neighbours, green when right, red when wrong;
    titles name the classes (:func:`class_name`)."""
    from ..metrics import knn

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
