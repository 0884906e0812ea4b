"""Retrieval metrics: Recall@K, MAP@R and NMI, with exact kNN by chunked matrix products.

Every sample queries all the others (the query itself is excluded from its own
neighbours), the CUB-200 retrieval protocol of docs/method.md. Non-finite embeddings are refused:
NaN distances would otherwise rank every query's twin first and score a perfect Recall@1. Finite
embeddings stay finite: before the search they are scaled by a power of two and centred, in float64
(:func:`prepare_embeddings`), which leaves every distance's order as it was and keeps a column of
1e20 (or of 1e-30) from overflowing (or vanishing in) the squared norms of float32. The distance
matrix is never materialised whole: queries are processed ``chunk_size`` rows at a time in one reused
(chunk_size, N) buffer (197 MB for 12,000 × 512 with the default 4096, faiss's own query
block), so memory stays bounded on CPU or GPU. The chunk size does not change the result.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from einops import rearrange

__all__ = ["knn", "prepare_embeddings", "recall_at_k", "map_at_r", "nmi", "retrieval_metrics"]


def _check_finite(embeddings: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the rows when an embedding (N, D) holds NaN or inf."""
    bad = ~torch.isfinite(embeddings).all(dim=1)                     # (N,)
    if bad.any():
        rows = bad.nonzero()[:, 0].tolist()
        raise ValueError(f"{len(rows)} of {embeddings.shape[0]} embeddings hold NaN or inf (rows {rows[:5]}"
                         f"{' ...' if len(rows) > 5 else ''}): the model diverged or was not loaded; "
                         "lower the learning rate and train again, or check the checkpoint")


def _check(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, D) as given (finite, N >= 2) and labels (N,) on their device; ``ValueError`` otherwise."""
    embeddings, labels = torch.as_tensor(embeddings), torch.as_tensor(labels)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
    _check_finite(embeddings)
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels must be (N,) with N={embeddings.shape[0]}, got shape {tuple(labels.shape)}")
    if embeddings.shape[0] < 2:
        raise ValueError("need at least 2 samples: each query is compared with the others")
    return embeddings, labels.to(embeddings.device)


def _power_of_two_scale(x: torch.Tensor) -> torch.Tensor:
    """``x`` divided by the power of two that brings its largest |entry| into [1, 2): exact in binary
    floating point (only entries that underflow change). Float32 or float64, kept as given."""
    lo, hi = torch.aminmax(x)
    top = max(-float(lo), float(hi))
    if top == 0.0:
        return x
    shift = 1 - math.frexp(top)[1]                                   # top * 2**shift in [1, 2)
    if shift == 0:
        return x
    half = shift // 2                                                # two factors: 2**shift alone may overflow
    return x * 2.0 ** half * 2.0 ** (shift - half)


@torch.no_grad()
def prepare_embeddings(embeddings: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """The float32 embeddings (N, D) that :func:`knn` compares: the same neighbours, no overflow.

    Divided by a power of two so that the largest |entry| lies in [1, 2) (exact; float64 input is
    scaled before it becomes float32, so values beyond float32's range survive), L2-normalised per
    row for ``metric="cosine"``, centred (the column means, accumulated in float64, subtracted:
    distances do not move, and a constant column goes exactly to 0) and scaled by a power of two
    again. The squared norms of the search, ``|x|²`` (N,), are then at most 4·D, so finite
    embeddings give finite distances (a column of 1e20 would overflow float32's squares to inf,
    and ``inf - inf`` is NaN), and a large common offset no longer swamps the differences between
    samples. About 0.1 s for 12,000 x 512 on a CPU. Non-finite input raises ``ValueError``.
    """
    x = torch.as_tensor(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(x.shape)}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if x.dtype != torch.float64:
        x = x.float()                                                # ints, halves: float32 (halves exactly)
    _check_finite(x)
    x = _power_of_two_scale(x).float()                               # (N, D) float32, max |x| in [1, 2)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    mean = x.sum(dim=0, dtype=torch.float64) / x.shape[0]            # (D,) accumulated in float64
    return _power_of_two_scale(x - mean.float())                     # (N, D) centred: distances unchanged


@torch.no_grad()
def knn(embeddings: torch.Tensor, k: int, chunk_size: int = 4096, metric: str = "euclidean") -> torch.Tensor:
    """Indices (N, k) of each sample's k nearest other samples, nearest first.

    Exact search by squared Euclidean distance ``|q|² - 2 q·x + |x|²`` on the embeddings of
    :func:`prepare_embeddings` (scaled and centred, L2-normalised first for ``metric="cosine"``),
    ``chunk_size`` queries at a time: one matrix product with ``-2 X`` (shape (D, N)), the two
    squared norms added in place, the query's own column set to +inf (it is excluded), and a
    top-k, all in one (chunk_size, N) buffer reused by every chunk. The indices are those of the
    plain formula on the whole (N, N) matrix of the prepared embeddings, bit for bit in the tests
    (``docs/benchmarks.md`` shows where the time goes).
    """
    x = torch.as_tensor(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
    x = prepare_embeddings(x, metric)                                # (N, D) float32, finite squares
    sq = (x * x).sum(1)                                              # (N,) |x|²
    db = rearrange(-2 * x, "n d -> d n")                             # (D, N); the factor 2 is exact
    out = torch.empty(n, k, dtype=torch.long, device=x.device)
    buf = torch.empty(min(chunk_size, n), n, device=x.device)        # (C, N), reused by every chunk
    for start in range(0, n, chunk_size):
        q = x[start:start + chunk_size]                              # (C, D)
        c = q.shape[0]
        key = torch.mm(q, db, out=buf[:c])                           # (C, N) -2 q·x
        key += sq[start:start + c, None]                             # |q|² - 2 q·x
        key += sq                                                    # |q|² - 2 q·x + |x|²
        key[:, start:start + c].diagonal().fill_(float("inf"))       # exclude the query itself
        out[start:start + c] = key.topk(k, dim=1, largest=False).indices
    return out


def _neighbours(embeddings: torch.Tensor, k: int, chunk_size: int, metric: str,
                neighbours: torch.Tensor | None) -> torch.Tensor:
    """The first k columns of precomputed ``knn`` indices, or a fresh search."""
    if neighbours is None:
        return knn(embeddings, k, chunk_size, metric)
    if neighbours.shape[1] < k:
        raise ValueError(f"neighbours holds {neighbours.shape[1]} columns, {k} are needed")
    return neighbours[:, :k]


def _check_ks(ks: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``ks`` is a non-empty list of integers >= 1."""
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be integers >= 1 (Recall@K counts the K nearest neighbours), got {ks}; "
                         "e.g. ks=(1, 2, 4, 8)")


def recall_at_k(embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 2, 4, 8),
                chunk_size: int = 4096, metric: str = "euclidean",
                neighbours: torch.Tensor | None = None) -> dict[int, float]:
    """Recall@K: share of queries whose K nearest other samples hold at least one of their class.

    Returns ``{K: recall}`` for each K in ``ks`` (docs/method.md, "The task"). ``neighbours``: indices
    from :func:`knn` with at least max(ks) columns, to reuse one search for several metrics.
    """
    embeddings, labels = _check(embeddings, labels)
    _check_ks(ks)
    n = embeddings.shape[0]
    kmax = min(max(ks), n - 1)                                      # K >= N-1: every other sample is retrieved
    nn = _neighbours(embeddings, kmax, chunk_size, metric, neighbours)  # (N, Kmax)
    hit = labels[nn] == labels[:, None]                             # (N, Kmax)
    # rank of the first hit (0-based); a query with none gets max(ks), a miss at every K, also at K >= N
    first = torch.where(hit.any(1), hit.long().argmax(1), torch.full_like(nn[:, 0], int(max(ks))))
    return {int(k): float((first < k).double().mean()) for k in ks}


def map_at_r(embeddings: torch.Tensor, labels: torch.Tensor, chunk_size: int = 4096,
             metric: str = "euclidean", neighbours: torch.Tensor | None = None) -> float:
    """MAP@R (Musgrave et al. 2020): for a query with R other samples of its class,
    ``(1/R) Σ_{i≤R} P(i)·rel(i)`` over its R nearest neighbours, averaged over queries.

    Queries whose class has no other sample (R = 0) are left out of the mean. ``neighbours``:
    indices from :func:`knn` with at least R_max columns (see :func:`recall_at_k`).
    """
    embeddings, labels = _check(embeddings, labels)
    _, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    r = counts[inverse] - 1                                          # (N,)
    rmax = int(r.max())
    if rmax == 0:
        raise ValueError("MAP@R needs at least one class with two samples")
    nn = _neighbours(embeddings, rmax, chunk_size, metric, neighbours)  # (N, Rmax)
    rel = (labels[nn] == labels[:, None]).float()
    rank = torch.arange(1, rmax + 1, device=rel.device, dtype=torch.float32)
    within = rank[None, :] <= r[:, None]                             # only the first R ranks count
    rel = rel * within
    precision = rel.cumsum(1) / rank[None, :]
    valid = r > 0
    ap = (precision * rel).sum(1)[valid] / r[valid].float()
    return float(ap.mean())


def nmi(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0, n_init: int = 1) -> float:
    """Normalised mutual information between k-means clusters (k = number of classes) and labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    embeddings, labels = _check(embeddings, labels)
    y = labels.cpu().numpy()
    k = len(np.unique(y))
    x = prepare_embeddings(embeddings)     # scaled and centred: k-means' clusters do not move, squares stay finite
    pred = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x.cpu().numpy())
    return float(normalized_mutual_info_score(y, pred))


def retrieval_metrics(embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 2, 4, 8),
                      with_nmi: bool = True) -> dict[str, float]:
    """All metrics in one flat dict: ``R@1, R@2, ..., MAP@R, NMI``."""
    embeddings, labels = _check(embeddings, labels)
    _check_ks(ks)
    rmax = int(labels.unique(return_counts=True)[1].max()) - 1
    nn = knn(embeddings, min(max(max(ks), rmax), embeddings.shape[0] - 1))   # one search serves both metrics
    out = {f"R@{k}": v for k, v in recall_at_k(embeddings, labels, ks, neighbours=nn).items()}
    out["MAP@R"] = map_at_r(embeddings, labels, neighbours=nn)
    if with_nmi:
        out["NMI"] = nmi(embeddings, labels)
    return out
