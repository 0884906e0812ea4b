"""Retrieval metrics: Recall@K, MAP@R and NMI, with exact kNN by chunked matrix products.

Every sample queries all the others (the query itself is excluded from its own
neighbours), the CUB-200 retrieval protocol of docs/method.md. Non-finite embeddings are refused:
NaN distances would otherwise rank every query's twin first and score a perfect Recall@1. The distance matrix is never
materialised whole: queries are processed ``chunk_size`` rows at a time in one reused
(chunk_size, N) buffer (197 MB for 12,000 × 512 with the default 4096, faiss's own query
block), so memory stays bounded on CPU or GPU. The chunk size does not change the result.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from einops import rearrange

__all__ = ["knn", "recall_at_k", "map_at_r", "nmi", "retrieval_metrics"]


def _check_finite(embeddings: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the rows when an embedding (N, D) holds NaN or inf."""
    bad = ~torch.isfinite(embeddings).all(dim=1)                     # (N,)
    if bad.any():
        rows = bad.nonzero()[:, 0].tolist()
        raise ValueError(f"{len(rows)} of {embeddings.shape[0]} embeddings hold NaN or inf (rows {rows[:5]}"
                         f"{' ...' if len(rows) > 5 else ''}): the model diverged or was not loaded; "
                         "lower the learning rate and train again, or check the checkpoint")


def _check(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings, labels = torch.as_tensor(embeddings), torch.as_tensor(labels)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
    _check_finite(embeddings)
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels must be (N,) with N={embeddings.shape[0]}, got shape {tuple(labels.shape)}")
    if embeddings.shape[0] < 2:
        raise ValueError("need at least 2 samples: each query is compared with the others")
    return embeddings.float(), labels.to(embeddings.device)


@torch.no_grad()
def knn(embeddings: torch.Tensor, k: int, chunk_size: int = 4096, metric: str = "euclidean") -> torch.Tensor:
    """Indices (N, k) of each sample's k nearest other samples, nearest first.

    Exact search by squared Euclidean distance ``|q|² - 2 q·x + |x|²`` (on L2-normalised
    embeddings for ``metric="cosine"``), ``chunk_size`` queries at a time: one matrix product
    with ``-2 X`` (shape (D, N)), the two squared norms added in place, the query's own column
    set to +inf (it is excluded), and a top-k, all in one (chunk_size, N) buffer reused by every
    chunk. The indices are those of the plain formula on the whole (N, N) matrix, bit for bit
    in the tests (``docs/benchmarks.md`` shows where the time goes).
    """
    x = torch.as_tensor(embeddings).float()
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(x.shape)}")
    _check_finite(x)
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
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
    kmax = min(max(ks), embeddings.shape[0] - 1)
    nn = _neighbours(embeddings, kmax, chunk_size, metric, neighbours)  # (N, Kmax)
    hit = labels[nn] == labels[:, None]                             # (N, Kmax)
    first = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(labels, kmax))  # rank of first hit
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
    pred = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(embeddings.cpu().numpy())
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
