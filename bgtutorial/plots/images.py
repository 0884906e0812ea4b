"""Showing images and classes: a (3, H, W) tensor as a picture, grids of them, class sizes and names."""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import rearrange

from ..data.cub import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["to_display", "image_grid", "class_balance", "class_name", "closest_pairs_figure"]


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


def closest_pairs_figure(pairs: dict[str, list[tuple[str, str, float]]], k: int = 8,
                         threshold: float | None = None) -> plt.Figure:
    """The closest (class, corpus character, share) pairs of each rule (``data.corpus.closest_pairs``): a
    row per rule, each pair drawn as the class's glyph beside the character's, in the first face that
    has both, with the share of ink left unmatched (a pair passes a rule at ``threshold`` or less)."""
    from ..data.glyph_classes import FACES, REFERENCE_SIZE, reference_masks

    light = [f for f in FACES if not f.bold]
    fig, axes = plt.subplots(len(pairs), k, figsize=(k * 1.5, len(pairs) * 1.6), squeeze=False)
    for row, (rule, items) in enumerate(pairs.items()):
        for col in range(k):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(items):
                continue
            cls, char, share = items[col]
            masks, present = reference_masks([cls, char], light, REFERENCE_SIZE, (1.0,))
            both = (present[0] & present[1]).nonzero()
            face = int(both[0]) if len(both) else 0
            pair = torch.cat([masks[0, face, 0], torch.ones(REFERENCE_SIZE, 2, dtype=torch.bool),
                              masks[1, face, 0]], dim=1)
            ax.imshow(~pair.numpy(), cmap="gray")
            # the class alone on its line: a Hebrew class beside Latin text would be reordered right to left
            ax.set_title(f"{cls}\nU+{ord(char):04X}: {share:.3f}", fontsize=8)
        axes[row, 0].text(-0.15, 0.5, rule, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=9)
    bar = "" if threshold is None else f" (a pair at {threshold:.2f} or less would be left out)"
    fig.suptitle("each class (left of the bar) beside its closest corpus character, per rule: share of ink unmatched"
                 + bar, fontsize=9)
    fig.tight_layout()
    return fig
