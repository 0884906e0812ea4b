"""Batches of m samples per class, the batch modules need positives in every batch.

Why not pytorch-metric-learning's ``MPerClassSampler``: it draws from a global NumPy
random state, so an epoch cannot be replayed from a seed, and a run killed mid-epoch
cannot resume at the exact batch it stopped at. This sampler is a pure function of
``(seed, epoch)``, can start at any batch (``start_batch``) and can give each rank its
share of every global batch (``rank``/``world_size``, for DistributedDataParallel).

:class:`SeededBatches` and :class:`SeededSamples` carry that determinism into the augmentation:
each sample's random transform is seeded by its position in the global batch, so a resumed run,
worker processes and N ranks all augment a sample the same way.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["MPerClassBatchSampler", "RandomBatchSampler", "SeededBatches", "SeededSamples"]


class _ReplayableBatchSampler(Sampler[list[int]]):
    """What both samplers share: batches are a pure function of ``(seed, epoch)``
    (:meth:`global_batches`), an epoch can start at any batch, each rank takes its slice."""

    batch_size: int
    num_batches: int
    rank: int
    world_size: int

    def _init_replay(self, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        if batch_size % world_size != 0:
            raise ValueError(f"batch_size={batch_size} must split evenly over world_size={world_size}")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.start_batch = 0, 0

    def iter_global_batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The global batches of ``epoch`` one at a time, each built when it is drawn."""
        raise NotImplementedError

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """Every global batch of ``epoch`` at once (a pure function of seed and epoch); training draws
        them lazily (:meth:`iter_global_batches`), so a huge ``num_batches`` costs no memory."""
        return list(self.iter_global_batches(epoch))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch (reshuffles) and the batch to start from (resume mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.world_size
        for b, batch in enumerate(self.iter_global_batches(self.epoch)):
            if b >= self.start_batch:                     # earlier batches are drawn (same RNG), not kept
                yield batch[self.rank * per_rank:(self.rank + 1) * per_rank].tolist()

    def __len__(self) -> int:
        return self.num_batches - self.start_batch


class MPerClassBatchSampler(_ReplayableBatchSampler):
    """Yields lists of dataset indices: ``batch_size // m`` distinct classes, ``m`` samples each.

    Args:
        labels: the label of every sample (``dataset.targets``).
        m: samples per class in a batch.
        batch_size: global batch size, a multiple of ``m``.
        num_batches: batches per epoch (default ``len(labels) // batch_size``).
        seed: with the epoch (:meth:`set_epoch`), the only source of randomness.
        rank, world_size: each rank receives its contiguous slice of every global batch.

    A class with fewer than ``m`` samples is sampled with replacement within a batch.
    """

    def __init__(self, labels: Sequence[int], m: int, batch_size: int, num_batches: int | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        labels = np.asarray(labels)
        if m < 1:
            raise ValueError(f"m (samples per class) must be >= 1, got {m}")
        if batch_size % m != 0:
            raise ValueError(f"batch_size={batch_size} is not a multiple of m={m}; "
                             f"use e.g. batch_size={max(m, batch_size // m * m)}")
        classes = np.unique(labels)
        self.classes_per_batch = batch_size // m
        if self.classes_per_batch > len(classes):
            raise ValueError(f"a batch of {batch_size} with m={m} needs {self.classes_per_batch} distinct classes "
                             f"but the data has only {len(classes)}; lower batch_size or raise m")
        self._init_replay(batch_size, seed, rank, world_size)
        self.m = m
        self.by_class = [np.flatnonzero(labels == c) for c in classes]
        self.num_batches = num_batches if num_batches is not None else max(1, len(labels) // batch_size)

    def iter_global_batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The global batches of ``epoch``, drawn one at a time from one seeded generator."""
        rng = np.random.default_rng([self.seed, epoch])
        pools = [rng.permutation(ix) for ix in self.by_class]
        cursor = [0] * len(pools)
        for _ in range(self.num_batches):
            chosen = rng.choice(len(pools), self.classes_per_batch, replace=False)
            batch = []
            for c in chosen:
                pool = pools[c]
                if len(pool) < self.m:
                    batch.extend(rng.choice(pool, self.m, replace=True))
                    continue
                if cursor[c] + self.m > len(pool):
                    pools[c], cursor[c] = rng.permutation(pool), 0
                    pool = pools[c]
                batch.extend(pool[cursor[c]:cursor[c] + self.m])
                cursor[c] += self.m
            yield np.asarray(batch)


class RandomBatchSampler(_ReplayableBatchSampler):
    """Yields lists of dataset indices drawn at random without replacement (shuffle + drop_last).

    The batches Proxy-Anchor's code trains its baseline with (train.py L141-150, no ``--IPC``):
    a batch of 120 from CUB's 100 training classes holds about 70 classes, most with one or two
    images. A pure function of ``(seed, epoch)`` with the same ``set_epoch``/``start_batch``/
    ``rank`` interface as :class:`MPerClassBatchSampler`, so runs resume at the exact batch. The
    batch modules need positives in every batch: use m-per-class batches with them.
    """

    def __init__(self, num_samples: int, batch_size: int, num_batches: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or batch_size > num_samples:
            raise ValueError(f"batch_size must be in [1, {num_samples}] (the dataset's size), got {batch_size}")
        self._init_replay(batch_size, seed, rank, world_size)
        self.num_samples = num_samples
        self.num_batches = num_batches if num_batches is not None else num_samples // batch_size

    def iter_global_batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The global batches of ``epoch``: consecutive slices of seeded permutations (a new
        permutation whenever one runs out, so ``num_batches`` may exceed one pass), one at a time."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        per_pass = self.num_samples // self.batch_size
        drawn = 0
        while drawn < self.num_batches:
            order = rng.permutation(self.num_samples)
            for i in range(min(per_pass, self.num_batches - drawn)):
                yield order[i * self.batch_size:(i + 1) * self.batch_size]
            drawn += per_pass


class SeededSamples(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` runs its random transform under ``seed``.

    The augmentation of a sample then depends only on where it stands in the epoch, not on
    worker processes or on where a resumed run started; the caller's RNG is left untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class SeededBatches:
    """Turns a batch sampler's index lists into ``(index, seed)`` lists for :class:`SeededSamples`.

    A sample's seed depends on its position in the *global* batch, so one process and N ranks
    (each holding a slice) augment every sample identically.
    """

    def __init__(self, sampler: MPerClassBatchSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed
        self.offset = sampler.rank * (sampler.batch_size // sampler.world_size)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        s = self.sampler
        for b, batch in enumerate(iter(s), start=s.start_batch):
            base = ((self.seed * 1_000_003 + s.epoch) * 1_000_003 + b) * 10_007
            yield [(i, (base + self.offset + j) % 2**62) for j, i in enumerate(batch)]
