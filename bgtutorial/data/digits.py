"""The embedded default dataset: scikit-learn's bundled handwritten digits made hard.

Real images that ship inside an installed package (``sklearn.datasets.load_digits``,
1,797 8×8 digits), in the same zero-shot protocol as CUB-200 retrieval: train on digits
0-4, test retrieval on the unseen digits 5-9. As they are, raw pixels already retrieve
the unseen digits almost perfectly, so each digit is placed on a 32×32 colour canvas
under nuisances a model must learn to ignore: random ink and background colours, an
affine jitter (scale, rotation, shear, shift), a colour gradient and pixel noise.
Everything is generated deterministically from a seed; several views per original.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch.utils.data import Dataset

__all__ = ["DigitsRetrieval", "render_digits"]


def render_digits(glyphs: torch.Tensor, views: int, seed: int, canvas: int = 32) -> torch.Tensor:
    """Render each 8×8 glyph ``views`` times on a nuisance-laden colour canvas.

    Args:
        glyphs: (N, 8, 8) ink intensity in [0, 1].
        views: renderings per glyph.
        seed: the only source of randomness.
        canvas: output side in pixels.
    Returns:
        (N·views, 3, canvas, canvas) float32 in [0, 1], ordered glyph-major.
    """
    g = torch.Generator().manual_seed(seed)
    n = glyphs.shape[0] * views
    src = repeat(glyphs.float(), "n h w -> (n v) 1 h w", v=views)
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    scale = 1.0 / (0.45 + 0.3 * u(n))                      # digit covers 45-75% of the canvas
    angle = (u(n) - 0.5) * math.radians(50)                 # ±25°
    shear = (u(n) - 0.5) * 0.5
    shift = (u(n, 2) - 0.5) * 0.5
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([scale * cos, scale * (-sin + shear), shift[:, 0]], -1),
        torch.stack([scale * sin, scale * cos, shift[:, 1]], -1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, [n, 1, canvas, canvas], align_corners=False)
    mask = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (N, 1, H, W)
    # ink and background colours far enough apart to keep the digit visible
    ink, bg = u(n, 3), u(n, 3)
    for _ in range(20):
        close = (ink - bg).norm(dim=1) < 0.5
        if not close.any():
            break
        ink[close], bg[close] = u(int(close.sum()), 3), u(int(close.sum()), 3)
    # a linear colour gradient across the background
    ramp_dir = u(n) * 2 * math.pi
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, canvas), torch.linspace(-1, 1, canvas), indexing="ij")
    ramp = rearrange(torch.cos(ramp_dir), "n -> n 1 1") * xs + rearrange(torch.sin(ramp_dir), "n -> n 1 1") * ys
    bg_img = rearrange(bg, "n c -> n c 1 1") + 0.15 * rearrange(ramp, "n h w -> n 1 h w") * rearrange(
        u(n, 3) - 0.5, "n c -> n c 1 1") * 2
    ink_img = repeat(ink, "n c -> n c h w", h=canvas, w=canvas)
    img = bg_img * (1 - mask) + ink_img * mask
    img = img + 0.06 * torch.randn(img.shape, generator=g)
    return img.clamp(0, 1)


class DigitsRetrieval(Dataset):
    """Hard handwritten digits for zero-shot retrieval, 3×32×32 tensors in [0, 1].

    ``split="train"`` holds digits 0-4 (labels 0-4), ``split="test"`` the unseen digits
    5-9 (labels 0-4, i.e. contiguous within the split). ``views`` renderings per original;
    the images are generated once, in memory, deterministically from ``seed``.
    """

    def __init__(self, split: Literal["train", "test"] = "train", views: int = 4, seed: int = 0,
                 canvas: int = 32, transform: Callable | None = None, limit: int | None = None) -> None:
        from sklearn.datasets import load_digits  # ships inside scikit-learn: no download

        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0   # (1797, 8, 8)
        target = torch.as_tensor(digits.target)
        keep = target < 5 if split == "train" else target >= 5
        glyphs, labels = images[keep], target[keep] - (0 if split == "train" else 5)
        if limit is not None:
            glyphs, labels = glyphs[:limit], labels[:limit]
        self.split, self.transform = split, transform
        self.images = render_digits(glyphs, views, seed=seed * 2 + (split == "test"), canvas=canvas)
        self.targets = repeat(labels, "n -> (n v)", v=views).tolist()
        first = 0 if split == "train" else 5
        self.classes = [f"digit {d}" for d in range(first, first + 5)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        return (self.transform(img) if self.transform else img), self.targets[index]

    def __repr__(self) -> str:
        return f"DigitsRetrieval(split={self.split!r}, images={len(self)}, classes={self.classes})"
