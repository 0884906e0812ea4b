"""The batch graph of BGFormer: visual (feature kNN) and semantic (label) relations in a mini-batch.

docs/method.md, "BGFormer". Adjacencies are boolean (B, B) matrices, row i listing the
samples node i may draw from; by default every node is its own neighbour.

The fixed feature-kNN graph here serves BGFormer's ``graph="features"`` option and the
``visual="minmax"`` variant; the default attention chooses its graph per head from its own
attention logits instead (``bgtutorial.bgformer.topk_attention_weights``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

__all__ = ["visual_graph", "semantic_graph", "normalize_adjacency", "same_label_share", "other_class_mass", "BatchGraph"]


@torch.no_grad()
def visual_graph(x: torch.Tensor, k: int, include_self: bool = True) -> torch.Tensor:
    """kNN adjacency (B, B) bool from similarities ``S = x xᵀ``: row i keeps its top-k entries.

    With ``include_self`` (the default) the node itself is always kept and counts as one of the k;
    without it, row i keeps the k largest entries of ``S[i]`` whatever they are, its own ``S[i, i]``
    competing like any other (the authors' min-max block, ``SGFormer2`` ``Attention_VG.forward``
    source line 71, a plain ``topk``). Each row has exactly ``min(k, B)`` neighbours; ``k >= B``
    gives the full graph. Ties go to the lower column index.
    """
    if x.ndim != 2:
        raise ValueError(f"visual_graph expects features (B, D), got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1 (the node itself), got {k}")
    b = x.shape[0]
    if k >= b:
        return torch.ones(b, b, dtype=torch.bool, device=x.device)
    sim = x.float() @ x.float().T                                   # (B, B)
    if include_self:
        sim.fill_diagonal_(float("inf"))                            # self first
    idx = sim.sort(dim=1, descending=True, stable=True).indices[:, :k]   # (B, k), ties: lower index
    adj = torch.zeros(b, b, dtype=torch.bool, device=x.device)
    return adj.scatter_(1, idx, True)


def semantic_graph(y: torch.Tensor, require_positive: bool = False) -> torch.Tensor:
    """Same-label adjacency (B, B) bool: ``Y[i, j] = (y_i == y_j)`` (the diagonal is True).

    With ``require_positive``, a batch where no two samples share a label raises: the
    semantic path would then carry no relation at all.
    """
    if y.ndim != 1:
        raise ValueError(f"labels must be (B,), got shape {tuple(y.shape)}")
    adj = rearrange(y, "i -> i 1") == rearrange(y, "j -> 1 j")
    if require_positive and int(adj.sum()) == y.numel():
        raise ValueError("the batch has no positive pair (no two samples share a label), so the label graph is "
                         "empty; build batches with MPerClassBatchSampler and m >= 2")
    return adj


def normalize_adjacency(a: torch.Tensor, add_self_loops: bool = True) -> torch.Tensor:
    """Symmetric normalisation ``D^-1/2 (A + I) D^-1/2`` with D the row sums of ``A + I``: (B, B) -> float (B, B).

    Entry by entry ``Â[i, j] = (A + I)[i, j] / sqrt(d_i d_j)``; symmetric whenever A is. The label
    graph's diagonal is already 1, so its self-loops weigh 2, as in the authors' label path
    (``adj + eye`` then ``adj_normalization``). ``add_self_loops=False`` normalises A itself.
    """
    a = a.float()
    if add_self_loops:
        a = a + torch.eye(a.shape[0], device=a.device)
    d = a.sum(1).clamp_min(1e-12).rsqrt()                           # (B,)
    return rearrange(d, "i -> i 1") * a * rearrange(d, "j -> 1 j")


def same_label_share(adj: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Share of a graph's edges, self-loops left out, that join two samples with the same label.

    ``adj`` (..., B, B), any non-zero entry being an edge (a bool adjacency or attention weights,
    e.g. one matrix per head), labels ``y`` (B,) -> shares (...,). A graph without edges gives NaN.
    """
    edge = (adj != 0) & ~torch.eye(y.shape[0], dtype=torch.bool, device=adj.device)
    same = rearrange(y, "i -> i 1") == rearrange(y, "j -> 1 j")            # (B, B)
    return (edge & same).sum((-2, -1)) / edge.sum((-2, -1))


def other_class_mass(attn: torch.Tensor, labels: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """Per query, the attention mass that lands on samples of *other* classes.

    ``attn`` (..., B, B): rows are queries i, columns keys j, each row summing to 1 (softmax or
    top-K weights, e.g. one matrix per head); ``labels`` (B,). Returns
    ``m[..., i] = sum_j attn[..., i, j] · [y_j != y_i]``, shape (..., B), in [0, 1]; with
    ``mean=True`` the average over the queries, shape (...). Uniform attention over a batch of
    m samples per class gives (B - m) / B; 0 means every query draws only on its own class.
    """
    if labels.ndim != 1 or attn.shape[-2:] != (labels.shape[0], labels.shape[0]):
        raise ValueError(f"attn must be (..., B, B) and labels (B,), got {tuple(attn.shape)} and {tuple(labels.shape)}")
    other = rearrange(labels, "i -> i 1") != rearrange(labels, "j -> 1 j")          # (B, B) bool
    mass = (attn.float() * other.to(attn.device)).sum(-1)                             # (..., B)
    return mass.mean(-1) if mean else mass


@dataclass
class BatchGraph:
    """The two graphs of one batch: ``visual`` (B, B) bool or None (when the attention picks its
    own graph from its logits), ``semantic`` (B, B) bool or None (no labels), ``semantic_norm``
    its normalised float version (or None)."""
    visual: torch.Tensor | None
    semantic: torch.Tensor | None = None
    semantic_norm: torch.Tensor | None = None

    @classmethod
    def build(cls, x: torch.Tensor | None, y: torch.Tensor | None, k: int,
              require_positive: bool = False, include_self: bool = True) -> "BatchGraph":
        """Visual kNN graph of features ``x`` (B, D) (none when ``x`` is None; ``include_self`` as in
        :func:`visual_graph`) and, when labels (B,) are given, the label graph."""
        sem = semantic_graph(y, require_positive) if y is not None else None
        vis = visual_graph(x, k, include_self) if x is not None else None
        return cls(vis, sem, normalize_adjacency(sem) if sem is not None else None)

    @property
    def density(self) -> float:
        """Share of the B² visual edges kept (edges over B², whatever the row counts)."""
        if self.visual is None:
            raise ValueError("this BatchGraph has no fixed visual graph (the attention chooses it per head "
                             "from its logits); build it with features x to get one")
        return float(self.visual.float().mean())
