"""The glyphs as a closed-set recognition task (``dataset="glyphs-lt"``): long-tailed recognition.

Every retrieval character (both halves of :class:`~bgtutorial.data.glyphs.GlyphsRetrieval`'s split, about
200 classes, none of them in the glyph backbone's pretraining corpus) is one class of a classifier.
The training split renders ``per_class`` images per class (``n_max`` of the long-tailed profile that
:func:`bgtutorial.data.splits.build_splits` then cuts, ``data.perturb.long_tail_counts``); the test
split is balanced, ``test_per_class`` images of every class, rendered from other seeds.

Rendering is :func:`bgtutorial.data.glyphs.build_glyphs` (cached): class c of a set rendered with
``seed`` s is drawn from the generator seed ``s · 1,000,003 + ord(c)`` (:func:`render_seed`). The test
set uses ``s + TEST_SEED_SHIFT``: since every character's code point is below 1,000,003, the two
splits share no render seed, hence no image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import torch
from torch.utils.data import Dataset

from .glyphs import _load_rendered

__all__ = ["GlyphsRecognition", "TEST_SEED_SHIFT", "render_seed"]

#: the test split is rendered with ``data_seed + TEST_SEED_SHIFT``: other seeds than the training split's
TEST_SEED_SHIFT = 7_919


def render_seed(seed: int, char: str) -> int:
    """The generator seed of one character's images in a set rendered with ``seed`` (as ``build_glyphs``)."""
    return seed * 1_000_003 + ord(char)


class GlyphsRecognition(Dataset):
    """Rendered glyphs for closed-set classification: every class in both splits, labels 0..C-1.

    Args:
        split: "train" (``per_class`` images per class, rendered with ``seed``) or "test"
            (``test_per_class`` per class, rendered with ``seed + TEST_SEED_SHIFT``: balanced).
        per_class, test_per_class: images per class of each split (the train one is ``n_max``).
        seed: the renderings' seed (``Config.data_seed``), fixed across training seeds.
        canvas, transform, num_classes, root, progress: as :class:`~bgtutorial.data.glyphs.GlyphsRetrieval`.

    ``classes[label]`` is the character, ``render_seeds[label]`` the generator seed its images came
    from, ``images`` the uint8 (N, 3, H, W) tensor, ``targets`` the labels.
    """

    def __init__(self, split: Literal["train", "test"] = "train", per_class: int = 300, seed: int = 0,
                 canvas: int = 32, transform: Callable | None = None, num_classes: int | None = None,
                 root: str | Path = "data", progress: bool = True, test_per_class: int = 20) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        n = per_class if split == "train" else test_per_class
        render = seed if split == "train" else seed + TEST_SEED_SHIFT
        data = _load_rendered(root, num_classes, n, render, canvas, progress)
        self.split, self.transform = split, transform
        self.classes = list(data["meta"]["classes"])
        self.render_seeds = [render_seed(render, c) for c in self.classes]
        self.images = data["images"]                                   # (N, 3, H, W) uint8
        self.targets = data["labels"].tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index].float() / 255.0
        return (self.transform(img) if self.transform else img), self.targets[index]

    def __repr__(self) -> str:
        return f"GlyphsRecognition(split={self.split!r}, images={len(self)}, classes={len(self.classes)})"
