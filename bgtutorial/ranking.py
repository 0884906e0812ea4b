"""Each sample's nearest other samples, ranked by an exact distance, with their ties.

The retrieval metrics (:mod:`bgtutorial.metrics`) must not depend on the order in which the
samples are given. Two things would make them do so: ties broken by position, and distances whose
rounding depends on where a sample sits in a matrix product. So the ranking is defined on one
distance per pair, computed from the two embeddings alone, and ties are kept as ties:

* **The exact space** (:func:`exact_space`): the embeddings in float64, divided by the power of
  two that brings the largest |entry| into [1, 2) (exact), L2-normalised in float64 for
  ``metric="cosine"``; float32 embeddings ranked by Euclidean distance are used as given (each
  difference is taken in float64, where no square of a float32 value can overflow or vanish, and
  a power-of-two scale would change no comparison). Floating input up to float64 converts exactly. Integers are shifted by
  each column's minimum in integer arithmetic first, so ``2**62 + i`` stays distinct from
  ``2**62 + j``; a column whose values span more than 2**53 cannot be held exactly in float64
  and is refused with ``ValueError``.
* **The distance** of a pair is ``Σ_d (a_d - b_d)²`` in float64 on the exact space, summed over
  the dimensions in one fixed order: a function of the two rows only, so a permutation of the
  samples permutes the distances and changes none of them.
* **The search** finds candidates fast, in float32 (the scaled, centred embeddings of
  ``metrics.prepare_embeddings``, squared distances ``|q|² - 2 q·x + |x|²`` by chunked matrix
  products). A rounding bound ``M`` per query, ``(D + 8) · 2**-24 · 1.1 · (|q| + max |x|)²``
  (the error of a float32 dot product of length D, Higham's γ_D, plus the cast and the centring),
  separates the rows whose order is already certain (consecutive float32 keys more than 2M apart
  over the first ``depth + 1``: no tie, and the order is the exact order) from the others, whose
  candidates (everything within 2M of the ``depth``-th key) are ranked again by the exact distance.

:class:`Ranking` holds, per query, the neighbour indices nearest first (ties in index order) and
which entries are tied with the one before; every tie group that starts within the first
``depth`` ranks is complete. The metrics then count ties by their expected value over the
orderings of each tie group (McSherry and Najork, ECIR 2008).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange

__all__ = ["Ranking", "exact_space", "search_space", "rank_neighbours", "ranking_from_distances"]

_U = 2.0 ** -24                    # float32's unit roundoff
_EXACT_BLOCK = 2 ** 21             # float64 entries per block of exact differences (16 MiB)
#: deepest ranking searched in float32; deeper ones (MAP@R's R) search in float64, whose far smaller
#: rounding bound leaves almost no near-ties to settle by exact distances (docs/benchmarks.md)
FLOAT32_DEPTH = 16


@dataclass(frozen=True)
class Ranking:
    """Neighbours (N, W) nearest first (-1 pads rows shorter than W), ``tied`` (N, W) True where an
    entry is at exactly the distance of the entry before it; tie groups starting at a rank
    ``<= depth`` are complete."""
    indices: torch.Tensor
    tied: torch.Tensor
    depth: int


def exact_space(embeddings: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """The embeddings (N, D) whose pairwise float64 distances define the ranking (module docstring):
    float32 (or narrower) ones as given, for ``metric="euclidean"`` (scaling them would change no
    comparison); the others in float64, scaled, normalised for ``"cosine"``."""
    x = torch.as_tensor(embeddings)
    if metric == "euclidean" and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return x.float()      # as given: their squares neither overflow nor underflow in float64, no scale needed
    if not (x.is_floating_point() or x.is_complex()):
        lo, hi = x.long().min(dim=0).values, x.long().max(dim=0).values          # (D,) each
        spans = [int(h) - int(low) for low, h in zip(lo.tolist(), hi.tolist())]   # Python ints: no overflow
        if spans and max(spans) > 2 ** 53:
            col = max(range(len(spans)), key=spans.__getitem__)
            raise ValueError(f"integer embeddings: column {col} spans {spans[col]} > 2**53, more than float64 "
                             "holds exactly, so distinct values would tie; rescale them or pass floats")
        x = (x.long() - lo).double()                                              # exact: spans <= 2**53
    else:
        x = x.double()
    lo, hi = torch.aminmax(x)
    top = max(-float(lo), float(hi))
    shift = 1 - math.frexp(top)[1] if top > 0.0 else 0                           # top * 2**shift in [1, 2)
    if shift and -1022 <= shift <= 1023:
        x = x * 2.0 ** shift
    elif shift:
        x = x * 2.0 ** (shift // 2) * 2.0 ** (shift - shift // 2)                 # 2**shift alone would overflow
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    return x


def search_space(x64: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """float64 embeddings (N, D) centred on the column midranges ``(min + max) / 2`` (order-free),
    scaled by a power of two so that the largest |entry| lies in [1, 2), cast to ``dtype``."""
    lo, hi = (t.double() for t in torch.aminmax(x64, dim=0))        # (D,) each
    mid = (lo + hi) / 2
    top = float(torch.maximum(hi - mid, mid - lo).max()) if x64.numel() else 0.0   # max |x - mid|, no pass over x
    scale = 2.0 ** (1 - math.frexp(top)[1]) if top > 0.0 else 1.0
    if x64.dtype == dtype == torch.float32:                          # float32 as given: no float64 copy
        return (x64 - mid.float()) * scale                           # the rounded midrange only translates
    return ((x64.double() - mid) * scale).to(dtype)


def _exact_pairs(x64: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ_d (x[a] - x[b])²`` (P,) in float64, summed in dimension order by a cumulative sum (one
    fixed order whatever the threads or the block), in blocks of bounded memory."""
    out = torch.empty(a.shape, dtype=torch.float64, device=x64.device)
    step = max(1, _EXACT_BLOCK // max(1, x64.shape[1]))
    for s in range(0, a.shape[0], step):
        diff = x64[a[s:s + step]].double() - x64[b[s:s + step]].double()         # (s, D), exact for float32
        out[s:s + step] = (diff * diff).cumsum(1)[:, -1]
    return out


def _full_row(x64: torch.Tensor, row: int, key: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One query whose tie group at ``depth`` is wider than the candidates: every sample whose float32
    key is within ``bound``, ranked by exact distance (ties in index order), and the tied flags."""
    cand = (key.double() <= bound).nonzero()[:, 0]                               # (w,) index order
    dist = _exact_pairs(x64, torch.full_like(cand, row), cand)
    dist, order = dist.sort(stable=True)                                          # ties keep index order
    tied = torch.zeros_like(order, dtype=torch.bool)
    tied[1:] = dist[1:] == dist[:-1]
    return cand[order], tied


def _chunk_keys(p: torch.Tensor, sq: torch.Tensor, db: torch.Tensor, start: int, c: int,
                buf: torch.Tensor) -> torch.Tensor:
    """Keys ``|q|² - 2 q·x + |x|²`` (c, N) of the queries ``start .. start + c``, their own column +inf."""
    key = torch.mm(p[start:start + c], db, out=buf[:c])
    key += sq[start:start + c, None]
    key += sq
    key[:, start:start + c].diagonal().fill_(float("inf"))
    return key


def _settle(x64: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, idx: torch.Tensor,
            margin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates (c, W) in float32 key order: clusters of keys closer than 2M ranked again by the
    exact distance (ties in index order). Returns indices, tied flags and each entry's cluster (c, W)."""
    v = values.double()
    close = (v[:, 1:] - v[:, :-1]) <= 2 * margin[rows, None]                      # (c, W-1) joins the previous
    cluster = torch.cat([torch.zeros_like(v[:, :1], dtype=torch.long), (~close).long().cumsum(1)], 1)
    shared = torch.zeros_like(cluster, dtype=torch.bool)                          # in a cluster of 2 or more
    shared[:, 1:] |= close
    shared[:, :-1] |= close
    exact = torch.zeros_like(v)
    r, c = shared.nonzero(as_tuple=True)
    exact[r, c] = _exact_pairs(x64, rows[r], idx[r, c])
    order = idx.argsort(dim=1, stable=True)                                       # index order, then
    order = order.gather(1, exact.gather(1, order).argsort(dim=1, stable=True))   # exact distance, then
    order = order.gather(1, cluster.gather(1, order).argsort(dim=1, stable=True))  # cluster: moves stay inside
    idx, exact, shared = idx.gather(1, order), exact.gather(1, order), shared.gather(1, order)
    tied = torch.zeros_like(shared)
    tied[:, 1:] = shared[:, 1:] & shared[:, :-1] & (cluster[:, 1:] == cluster[:, :-1]) & (exact[:, 1:] == exact[:, :-1])
    return idx, tied, cluster


def rank_neighbours(embeddings: torch.Tensor, depth: int, chunk_size: int = 4096, metric: str = "euclidean",
                    extra: int = 8) -> Ranking:
    """The :class:`Ranking` of every sample's other samples, complete with ties to rank ``depth``."""
    x = torch.as_tensor(embeddings)
    if x.ndim != 2 or not torch.isfinite(x).all():
        raise ValueError(f"embeddings must be finite and (N, D), got shape {tuple(x.shape)}"
                         f"{'' if x.ndim != 2 else ' with NaN or inf'}")
    n = x.shape[0]
    if not 1 <= depth <= n - 1:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {depth}")
    x64 = exact_space(x, metric)
    tf32 = x.is_cuda and torch.backends.cuda.matmul.allow_tf32                    # products of 10-bit mantissas
    dtype = torch.float32 if depth <= FLOAT32_DEPTH and not tf32 else torch.float64
    p = search_space(x64, dtype)                                                  # (N, D)
    sq = (p * p).sum(1)                                                           # (N,)
    norm = sq.double().sqrt()
    u = _U if dtype == torch.float32 else 2.0 ** -53
    margin = (p.shape[1] + 8) * u * 1.1 * (norm + norm.max()) ** 2               # (N,) bound on |key - exact|
    db = rearrange(-2 * p, "n d -> d n")
    width = min(depth + extra, n - 1)                                             # candidates per query
    buf = torch.empty(min(chunk_size, n), n, device=p.device, dtype=dtype)
    idx_parts, tie_parts = [], []
    for start in range(0, n, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, n), device=p.device)
        key = _chunk_keys(p, sq, db, start, rows.shape[0], buf)
        top = key.topk(width, dim=1, largest=False)                               # (c, W) nearest first
        idx, tied, cluster = _settle(x64, rows, top.values, top.indices, margin)
        # a row is complete when the cluster of its depth-th entry ends before the candidates do
        open_rows = (cluster[:, depth - 1] == cluster[:, -1]) if width < n - 1 else torch.zeros_like(rows, dtype=torch.bool)
        part = [(idx, tied)]
        for i in open_rows.nonzero()[:, 0].tolist():
            bound = float(top.values[i, depth - 1]) + 2 * float(margin[rows[i]])
            part.append((*_full_row(x64, int(rows[i]), key[i], bound), i))
        idx, tied = _merge(part, width) if len(part) > 1 else (idx, tied)
        idx_parts.append(idx)
        tie_parts.append(tied)
    return Ranking(_pad_cat(idx_parts, -1), _pad_cat(tie_parts, False), depth)


def _merge(part: list, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's settled candidates with the rows ranked in full written over them (rows may grow)."""
    idx, tied = part[0]
    w = max([width] + [len(ci) for ci, _, _ in part[1:]])
    out_i = torch.full((idx.shape[0], w), -1, dtype=torch.long, device=idx.device)
    out_t = torch.zeros((idx.shape[0], w), dtype=torch.bool, device=idx.device)
    out_i[:, :width], out_t[:, :width] = idx, tied
    for ci, ct, i in part[1:]:
        out_i[i], out_t[i] = -1, False
        out_i[i, :len(ci)], out_t[i, :len(ci)] = ci, ct
    return out_i, out_t


def _pad_cat(parts: list[torch.Tensor], fill) -> torch.Tensor:
    """Row blocks of different widths, padded on the right with ``fill`` and stacked."""
    w = max(t.shape[1] for t in parts)
    return torch.cat([torch.nn.functional.pad(t, (0, w - t.shape[1]), value=fill) for t in parts])


def ranking_from_distances(distance_rows, n: int, depth: int, chunk_size: int = 1024) -> Ranking:
    """A :class:`Ranking` from whole rows of distances: ``distance_rows(start, stop)`` gives (c, N)
    distances (the query's own column is set to +inf here). Ties: exactly equal distances."""
    if not 1 <= depth <= n - 1:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {depth}")
    idx_parts, tie_parts = [], []
    for start in range(0, n, chunk_size):
        d = distance_rows(start, min(start + chunk_size, n))                      # (c, N)
        rows = torch.arange(d.shape[0])
        d[rows, rows + start] = float("inf")
        dist, order = torch.sort(d, dim=1, stable=True)                           # ties in index order
        w = int((dist <= dist[:, depth - 1:depth]).sum(1).max())                  # the widest complete group
        tied = torch.zeros(d.shape[0], w, dtype=torch.bool)
        tied[:, 1:] = dist[:, 1:w] == dist[:, :w - 1]
        idx_parts.append(order[:, :w])
        tie_parts.append(tied)
    return Ranking(_pad_cat(idx_parts, -1), _pad_cat(tie_parts, False), depth)
