"""What a study does to a training set: flipped labels, corrupted images, a long tail, subsets.

Each wrapper is a :class:`~torch.utils.data.Dataset` over another one and keeps ``targets``;
each choice is seeded and a pure function of its arguments, so every method and training seed
sees the same perturbed data. :func:`bgtutorial.data.splits.build_splits` applies them in the
order the config asks for (validation classes, long tail, corrupted images, label noise).

* :func:`flip_labels`, :class:`NoisyLabels`: a share of the labels flipped to another class.
* :func:`corrupt_plan`, :func:`corrupt_image`, :class:`CorruptedImages`: a share of the images
  occluded by a patch of noise or replaced by noise, the same images in every epoch.
* :func:`long_tail_counts`, :func:`long_tailed`: an exponential long-tailed profile (Cao et al. 2019).
* :class:`IndexSubset`, :class:`ClassSubset`: some samples or some classes of a dataset.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["NoisyLabels", "flip_labels", "CORRUPTIONS", "OCCLUDE_SIDE", "corrupt_plan", "corrupt_image",
           "CorruptedImages", "IndexSubset", "ClassSubset", "long_tail_counts", "long_tailed"]


class NoisyLabels(Dataset):
    """``dataset`` with its labels replaced by ``targets`` (e.g. :func:`flip_labels`); images unchanged."""

    def __init__(self, dataset: Dataset, targets: list[int]) -> None:
        self.dataset, self.targets = dataset, targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], self.targets[index]


def flip_labels(targets: list[int], share: float, seed: int) -> list[int]:
    """Flip ``share`` of the labels to a different, uniformly drawn class (seeded)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    y = torch.tensor(targets)
    n_cls = int(y.max()) + 1
    flip = torch.randperm(len(y), generator=g)[: round(share * len(y))]
    shift = torch.randint(1, n_cls, (len(flip),), generator=g)
    y[flip] = (y[flip] + shift) % n_cls
    return y.tolist()


#: the two kinds of corruption; ``"occlude"``: a square patch of noise, ``"noise"``: the whole image
CORRUPTIONS = ("occlude", "noise")
#: side of the occluding square as a share of the image side: drawn uniformly in this range
OCCLUDE_SIDE = (0.4, 0.7)


def corrupt_plan(n: int, share: float, seed: int, kind: str = "mixed") -> dict[int, str]:
    """Which of ``n`` images are corrupted and how: ``{index: "occlude" | "noise"}`` (seeded).

    ``round(share * n)`` indices, drawn without replacement; with ``kind="mixed"`` each gets a kind
    by a fair seeded coin, with ``kind="noise"`` or ``"occlude"`` every one gets that kind (the same
    indices: the coin is still drawn, then overruled). A pure function of (n, share, seed, kind).
    ``share`` outside [0, 1] or another ``kind`` raises ``ValueError``.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the corrupted share must be in [0, 1], got {share}")
    if kind != "mixed" and kind not in CORRUPTIONS:
        raise ValueError(f"kind must be 'mixed' or one of {', '.join(CORRUPTIONS)}, got {kind!r}")
    g = torch.Generator().manual_seed(20_000 + seed)
    chosen = torch.randperm(n, generator=g)[: round(share * n)]
    coins = torch.randint(0, len(CORRUPTIONS), (len(chosen),), generator=g)
    return {int(i): (CORRUPTIONS[int(c)] if kind == "mixed" else kind) for i, c in zip(chosen, coins)}


def corrupt_image(x: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """A corrupted copy of image ``x`` (C, H, W); ``kind`` "occlude" or "noise"; seeded by ``seed``.

    The noise is uniform between each channel's smallest and largest value in ``x`` (so it stays
    in the image's range, normalised or not). "occlude" replaces a square whose side is a share
    in :data:`OCCLUDE_SIDE` of the shorter image side, at a uniformly drawn position; "noise"
    replaces every pixel. Deterministic: the same (x, kind, seed) gives the same image.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"kind must be one of {', '.join(CORRUPTIONS)}, got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    c, h, w = x.shape
    lo = x.amin(dim=(1, 2), keepdim=True)                          # (C, 1, 1)
    hi = x.amax(dim=(1, 2), keepdim=True)
    noise = lo + (hi - lo) * torch.rand(c, h, w, generator=g, dtype=torch.float32).to(x.dtype)   # (C, H, W)
    if kind == "noise":
        return noise
    frac = OCCLUDE_SIDE[0] + (OCCLUDE_SIDE[1] - OCCLUDE_SIDE[0]) * float(torch.rand(1, generator=g))
    side = max(1, round(frac * min(h, w)))
    top = int(torch.randint(0, h - side + 1, (1,), generator=g))
    left = int(torch.randint(0, w - side + 1, (1,), generator=g))
    out = x.clone()
    out[:, top:top + side, left:left + side] = noise[:, top:top + side, left:left + side]
    return out


class CorruptedImages(Dataset):
    """``dataset`` with the images of :func:`corrupt_plan` corrupted (labels and ``targets`` unchanged).

    ``plan`` maps index -> kind (``kind``: as in :func:`corrupt_plan`); image ``i``'s corruption is
    seeded by ``(seed, i)``, so it is the
    same in every epoch (the augmentation before it still varies).
    """

    def __init__(self, dataset: Dataset, share: float, seed: int, kind: str = "mixed") -> None:
        self.dataset, self.seed = dataset, seed
        self.targets = list(dataset.targets)
        self.plan = corrupt_plan(len(dataset), share, seed, kind)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        kind = self.plan.get(index)
        if kind is None:
            return x, y
        return corrupt_image(x, kind, (self.seed * 1_000_003 + index) % 2**62), y


class IndexSubset(Dataset):
    """The samples ``indices`` of ``dataset`` (labels unchanged), with ``targets``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        self.targets = [dataset.targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


class ClassSubset(IndexSubset):
    """The samples of ``dataset`` whose label is in ``classes`` (labels unchanged), with ``targets``."""

    def __init__(self, dataset: Dataset, classes: set[int]) -> None:
        super().__init__(dataset, [i for i, t in enumerate(dataset.targets) if t in classes])


def long_tail_counts(counts: Sequence[int], imbalance: float, seed: int) -> list[int]:
    """Images to keep per class for an exponential long-tailed profile with ratio ``imbalance``.

    The profile of the long-tailed CIFAR benchmarks (Cao et al. 2019, "Learning Imbalanced Datasets
    with Label-Distribution-Aware Margin Loss", arXiv 1906.07413, Sec. 4.1):
    ``n_c = round(n_max * rho ** (-r_c / (C - 1)))``, where ``counts[c]`` holds class c's images,
    ``n_max = max(counts)``, ``rho = imbalance`` and ``r_c`` is class c's rank (0 = head, C-1 = tail)
    in a permutation of the C classes seeded by ``seed``. Each class keeps at least 2 images (a
    positive pair) and never more than it has. ``imbalance=1`` keeps every class whole.
    """
    if imbalance < 1.0:
        raise ValueError(f"imbalance rho = n_max / n_min must be >= 1, got {imbalance}")
    counts = [int(n) for n in counts]
    n_classes, n_max = len(counts), max(counts)
    rank = np.empty(n_classes, dtype=int)
    rank[np.random.default_rng([seed, 1906]).permutation(n_classes)] = np.arange(n_classes)   # class -> rank
    out = []
    for c, have in enumerate(counts):
        target = n_max * imbalance ** (-rank[c] / max(n_classes - 1, 1))
        out.append(min(have, max(2, int(round(target)))))
    return out


def long_tailed(dataset: Dataset, imbalance: float, seed: int) -> Dataset:
    """A long-tailed subset of a training set (:func:`long_tail_counts`), or ``dataset`` itself for ``imbalance=1``.

    Labels are kept; which images a class keeps is a seeded choice. The same ``seed`` gives the
    same subset whatever the training seed, so every method and seed trains on one long-tailed split.
    """
    if imbalance == 1.0:
        return dataset
    targets = np.asarray(dataset.targets)
    classes = np.unique(targets)
    members = [np.flatnonzero(targets == c) for c in classes]                    # indices of each class
    keep = long_tail_counts([len(ix) for ix in members], imbalance, seed)
    rng = np.random.default_rng([seed, 1906, 1])
    kept = np.concatenate([rng.choice(ix, n, replace=False) for ix, n in zip(members, keep)])
    return IndexSubset(dataset, np.sort(kept))
