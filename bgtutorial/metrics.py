"""Retrieval metrics: Recall@K, MAP@R and NMI, which no permutation of the samples changes.

Every sample queries all the others (the query itself is excluded from its own neighbours), the
CUB-200 retrieval protocol of docs/method.md. Non-finite embeddings are refused: NaN distances
would otherwise rank every query's twin first and score a perfect Recall@1.

**Order of the samples.** The neighbours are ranked by one exact distance per pair and ties are
kept (:mod:`bgtutorial.ranking`: float64 squared distances on the embeddings scaled by a power of
two, found by a chunked float32 search whose rounding is bounded, so memory stays at one
(chunk_size, N) buffer; integers are shifted exactly, so ``2**62 + i`` stays distinct). Recall@K
and MAP@R count each group of tied neighbours by the expected value over its orderings
(McSherry and Najork, "Computing information retrieval performance measures efficiently in the
presence of tied scores", ECIR 2008); the means over queries are summed in sorted order; NMI's
k-means sees the rows in lexicographic order. So a permutation of the samples changes none of
the three. The chunk size does not change the result either.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .ranking import Ranking, exact_space, rank_neighbours, search_space

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


@torch.no_grad()
def prepare_embeddings(embeddings: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """The float32 embeddings (N, D) that the search compares: the same neighbours, no overflow.

    The exact space of :func:`bgtutorial.ranking.exact_space` (float64, divided by a power of two so
    that the largest |entry| lies in [1, 2), L2-normalised for ``metric="cosine"``; integers shifted
    exactly, columns spanning more than 2**53 refused), centred on each column's midrange
    ``(min + max) / 2`` in float64 (distances do not move, a constant column goes exactly to 0, and a
    large common offset no longer swamps the differences between samples), scaled by a power of two
    again and cast to float32. Each row is a function of its own values and of per-column minima and
    maxima, so a permutation of the samples permutes the rows and changes none. The squared norms of
    the search, ``|x|²`` (N,), are at most 4·D, so finite embeddings give finite distances.
    Non-finite input raises ``ValueError``.
    """
    x = torch.as_tensor(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(x.shape)}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if x.is_floating_point():
        _check_finite(x)
    return search_space(exact_space(x, metric))


@torch.no_grad()
def knn(embeddings: torch.Tensor, k: int, chunk_size: int = 4096, metric: str = "euclidean") -> torch.Tensor:
    """Indices (N, k) of each sample's k nearest other samples, nearest first, ties in index order.

    Ranked by the exact squared Euclidean distance of :mod:`bgtutorial.ranking` (float64, one value
    per pair; L2-normalised first for ``metric="cosine"``), found by a float32 search in chunks of
    ``chunk_size`` queries (one reused (chunk_size, N) buffer) and checked against a rounding bound;
    the query itself is excluded. :func:`rank_neighbours` keeps the ties, which the metrics need.
    """
    x = torch.as_tensor(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(x.shape)}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if x.is_floating_point():
        _check_finite(x)
    return rank_neighbours(x, k, chunk_size, metric).indices[:, :k]


def _neighbours(embeddings: torch.Tensor, k: int, chunk_size: int, metric: str,
                neighbours: Ranking | None) -> Ranking:
    """A precomputed :class:`Ranking` complete to rank k, or a fresh search."""
    if neighbours is None:
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        return rank_neighbours(embeddings, k, chunk_size, metric)
    if not isinstance(neighbours, Ranking):
        raise ValueError("neighbours must be a Ranking (rank_neighbours, ranking_from_distances): bare indices "
                         "lose the ties, and the metrics would depend on the order of the samples")
    if neighbours.depth < k:
        raise ValueError(f"neighbours is complete to rank {neighbours.depth}, {k} are needed")
    return neighbours


def _check_ks(ks: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``ks`` is a non-empty list of integers >= 1."""
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be integers >= 1 (Recall@K counts the K nearest neighbours), got {ks}; "
                         "e.g. ks=(1, 2, 4, 8)")


def _rel(ranking: Ranking, labels: torch.Tensor) -> torch.Tensor:
    """(N, W) True where the neighbour holds the query's class (padding: False)."""
    idx = ranking.indices
    return (labels[idx.clamp(min=0)] == labels[:, None]) & (idx >= 0)


def _groups(tied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last column (N, W) of the tie group of every entry of a ranking."""
    w = tied.shape[1]
    col = torch.arange(w, device=tied.device).expand_as(tied)
    first = torch.where(tied, torch.zeros_like(col), col).cummax(1).values
    ends = torch.ones_like(tied)
    ends[:, :-1] = ~tied[:, 1:]                                      # the next entry starts a new group
    last = torch.where(ends, col, torch.full_like(col, w)).flip(1).cummin(1).values.flip(1)
    return first, last


def recall_at_k(embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 2, 4, 8),
                chunk_size: int = 4096, metric: str = "euclidean",
                neighbours: Ranking | None = None) -> dict[int, float]:
    """Recall@K: share of queries whose K nearest other samples hold at least one of their class.

    Returns ``{K: recall}`` for each K in ``ks`` (docs/method.md, "The task"). **Ties** count by
    their expected value over the orderings of the tied neighbours (McSherry and Najork, ECIR 2008):
    when the K-th place falls inside a group of G neighbours at exactly the same distance, of which
    h hold the query's class and m = K - (number strictly nearer) are retrieved, a query with no
    hit strictly nearer scores ``1 - C(G-h, m) / C(G, m)``. So a permutation of the samples never
    changes the result. K >= N retrieves every other sample. ``neighbours``: a :class:`Ranking`
    from :func:`rank_neighbours` complete to rank min(max(ks), N-1), to share one search.
    """
    embeddings, labels = _check(embeddings, labels)
    _check_ks(ks)
    n = embeddings.shape[0]
    kmax = min(max(ks), n - 1)
    ranking = _neighbours(embeddings, kmax, chunk_size, metric, neighbours)
    rel = _rel(ranking, labels)                                       # (N, W)
    first, last = _groups(ranking.tied)
    before_hits = torch.cat([torch.zeros_like(rel[:, :1], dtype=torch.long), rel.long().cumsum(1)], 1)  # (N, W+1)
    out = {}
    for k in ks:
        pos = torch.full((n, 1), min(int(k), n - 1) - 1, device=rel.device)   # 0-based rank of the K-th
        a, b = first.gather(1, pos)[:, 0], last.gather(1, pos)[:, 0]          # (N,) its group's columns
        hit_before = before_hits.gather(1, a[:, None])[:, 0] > 0
        g = (b - a + 1).double()
        h = (before_hits.gather(1, b[:, None] + 1)[:, 0] - before_hits.gather(1, a[:, None])[:, 0]).double()
        m = (pos[:, 0] - a + 1).double()                             # places of the group inside the K
        t = torch.arange(int(m.max()), device=rel.device, dtype=torch.float64)
        miss = torch.where(t < m[:, None], ((g - h)[:, None] - t).clamp(min=0) / (g[:, None] - t), 1.0)
        score = torch.where(hit_before, 1.0, 1.0 - miss.prod(1))
        out[int(k)] = float(score.sort().values.mean())            # sorted: the same sum in any order
    return out


def map_at_r(embeddings: torch.Tensor, labels: torch.Tensor, chunk_size: int = 4096,
             metric: str = "euclidean", neighbours: Ranking | None = None) -> float:
    """MAP@R (Musgrave et al. 2020): for a query with R other samples of its class,
    ``(1/R) Σ_{i≤R} P(i)·rel(i)`` over its R nearest neighbours, averaged over queries.

    Queries whose class has no other sample (R = 0) are left out of the mean. **Ties** count by
    their expected value over the orderings of each tie group (McSherry and Najork, ECIR 2008):
    rank i inside a group that occupies ranks a+1..a+G, holds h samples of the class and follows H
    of them, contributes ``(h/G)·(H + 1 + (i-a-1)(h-1)/(G-1)) / i``. ``neighbours``: a
    :class:`Ranking` complete to rank R_max (see :func:`recall_at_k`).
    """
    embeddings, labels = _check(embeddings, labels)
    _, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    r = counts[inverse] - 1                                          # (N,)
    rmax = int(r.max())
    if rmax == 0:
        raise ValueError("MAP@R needs at least one class with two samples")
    ranking = _neighbours(embeddings, rmax, chunk_size, metric, neighbours)
    rel = _rel(ranking, labels)
    first, last = _groups(ranking.tied)
    hits = torch.cat([torch.zeros_like(rel[:, :1], dtype=torch.long), rel.long().cumsum(1)], 1).double()
    big_h = hits.gather(1, first)                                    # (N, W) hits before the group
    h = hits.gather(1, last + 1) - big_h                             # (N, W) hits inside the group
    g = (last - first + 1).double()
    col = torch.arange(rel.shape[1], device=rel.device, dtype=torch.float64)
    inside = torch.where(g > 1, (col - first) * (h - 1) / (g - 1).clamp(min=1), 0.0)
    term = h / g * (big_h + 1 + inside) / (col + 1)                  # (N, W) expected P(i) rel(i)
    term = torch.where(col[None, :] < r[:, None], term, 0.0)[:, :rmax]
    valid = r > 0
    return float((term.sum(1)[valid] / r[valid].double()).sort().values.mean())   # sorted: order-free sum


def nmi(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0, n_init: int = 1) -> float:
    """Normalised mutual information between k-means clusters (k = number of classes) and labels.

    k-means runs on :func:`prepare_embeddings` (scaled and centred: its clusters do not move, its
    squares stay finite) with the rows sorted lexicographically first, so that its seeded start
    picks the same points whatever order the samples came in (identical rows are interchangeable).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    embeddings, labels = _check(embeddings, labels)
    x = prepare_embeddings(embeddings).cpu().numpy()                 # (N, D) float32
    order = np.lexsort(x.T[::-1])                                    # rows in lexicographic order
    y = labels.cpu().numpy()[order]
    k = len(np.unique(y))
    pred = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x[order])
    return float(normalized_mutual_info_score(y, pred))


def retrieval_metrics(embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 2, 4, 8),
                      with_nmi: bool = True) -> dict[str, float]:
    """All metrics in one flat dict: ``R@1, R@2, ..., MAP@R, NMI``."""
    embeddings, labels = _check(embeddings, labels)
    _check_ks(ks)
    rmax = int(labels.unique(return_counts=True)[1].max()) - 1
    nn = rank_neighbours(embeddings, min(max(max(ks), rmax, 1), embeddings.shape[0] - 1))   # one search serves both
    out = {f"R@{k}": v for k, v in recall_at_k(embeddings, labels, ks, neighbours=nn).items()}
    out["MAP@R"] = map_at_r(embeddings, labels, neighbours=nn)
    if with_nmi:
        out["NMI"] = nmi(embeddings, labels)
    return out
