"""BGFormer, the Batch-Graph Transformer (Wang, Jiang, Wang, Luo; arXiv 2211.10622).

docs/method.md, section "BGFormer". On the pooled features X (B, D) of a mini-batch, one block does

    X̂ = LN(X)
    V = SSA(X̂, G_vis)           structure-constrained attention: softmax over kNN edges only
    S = Â (X̂ W)                 label-graph propagation, Â = D^-1/2 (Y + I) D^-1/2
    X ← X + λ·P_v(V) + (1-λ)·P_s(S)
    X ← X + MLP(LN(X))          pre-norm FFN, hidden 4·D, GELU

Training only, like BatchFormer: ``augment(x, y)`` returns ``(cat[x, BGF(x, y)], cat[y, y])``
with the plain half first; at evaluation it is the identity, so no labels are needed at test.

Choices marked "our reading" in docs/method.md are constructor options (defaults documented there):
``visual`` ("attention" = Q/K/V attention over the top-k keys, the default; "minmax" = kept
scores min-max rescaled per row, no softmax, output ``A X̂``), ``k``, ``lam``, ``depth``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .batchformer import check_features
from .graph import BatchGraph

__all__ = ["StructureConstrainedAttention", "MinMaxGraphAggregation", "SemanticPropagation", "BGFormerBlock",
           "BGFormer"]


class StructureConstrainedAttention(nn.Module):
    """Multi-head attention whose softmax runs over the graph's edges only: (B, D), (B, B) -> (B, D).

    Returns the concatenated heads; the block's visual projection P_v plays the role of W_O.
    """

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b (three h d) -> three 1 h b d", three=3, h=self.num_heads)
        mask = rearrange(adj, "i j -> 1 1 i j")          # True = edge: key j may be attended by query i
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return rearrange(out, "1 h b d -> b (h d)")      # (B, D)


class MinMaxGraphAggregation(nn.Module):
    """Variant (a) of the authors' code: ``A X̂`` with A the kept similarities min-max rescaled per row.

    No parameters, no softmax; non-edges get weight 0. A row whose kept scores are all equal
    gets weight 1 on each of its edges.
    """

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        sim = x @ x.T                                                      # (B, B)
        lo = sim.masked_fill(~adj, float("inf")).amin(1, keepdim=True)     # (B, 1) over kept entries
        hi = sim.masked_fill(~adj, float("-inf")).amax(1, keepdim=True)
        span = hi - lo
        a = torch.where(span > 0, (sim - lo) / span.clamp_min(1e-12), torch.ones_like(sim))
        return (a * adj) @ x                                               # (B, D)


class SemanticPropagation(nn.Module):
    """Label-graph propagation ``Â (X W)``: (B, D), (B, B) float -> (B, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, a_norm: torch.Tensor) -> torch.Tensor:
        return a_norm.to(x.dtype) @ self.weight(x)


class BGFormerBlock(nn.Module):
    """One BGFormer block (see the module docstring): (B, D), labels (B,) or None -> (B, D)."""

    def __init__(self, dim: int, num_heads: int = 8, k: int = 8, lam: float = 0.5, visual: str = "attention",
                 dropout: float = 0.1, ffn_mult: int = 4, require_positive_pairs: bool = True) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        if visual not in ("attention", "minmax"):
            raise ValueError(f"visual must be 'attention' or 'minmax', got {visual!r}")
        self.k, self.lam, self.require_positive_pairs = k, lam, require_positive_pairs
        self.norm = nn.LayerNorm(dim)
        self.visual = StructureConstrainedAttention(dim, num_heads, dropout) if visual == "attention" \
            else MinMaxGraphAggregation()
        self.semantic = SemanticPropagation(dim)
        self.proj_visual = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.proj_semantic = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_mult * dim, dim), nn.Dropout(dropout))

    def graph(self, xn: torch.Tensor, y: torch.Tensor | None) -> BatchGraph:
        """The batch graph this block uses: kNN on the normalised features ``xn = LN(x)`` (B, D), labels."""
        return BatchGraph.build(xn.detach(), y if self.lam < 1 else None, self.k, self.require_positive_pairs)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None and self.lam < 1:
            raise ValueError("BGFormer's semantic path needs the labels y (B,); it runs in training only. "
                             "Pass y, or lam=1 for the visual path alone.")
        xn = self.norm(x)                                                   # X̂ (B, D)
        g = self.graph(xn, y)
        out = x + self.lam * self.proj_visual(self.visual(xn, g.visual))
        if self.lam < 1:                                                    # λ = 1 removes the label path exactly
            out = out + (1 - self.lam) * self.proj_semantic(self.semantic(xn, g.semantic_norm))
        return out + self.ffn(out)                                          # (B, D)


class BGFormer(nn.Module):
    """``depth`` BGFormer blocks over the batch, with BatchFormer's ``forward``/``augment`` contract.

    Args:
        dim: feature width D.
        num_heads: heads of the structure-constrained attention.
        depth: blocks (1-2 in the authors' runs).
        k: neighbours per node in the visual kNN graph, self included (k >= B: full graph).
        lam: λ, weight of the visual path against the label path (0.1-0.7 in the authors' runs).
        visual: "attention" (default) or "minmax" (see the module docstring).
        dropout: in attention, projections and FFN.
        require_positive_pairs: raise on a batch in which no two samples share a label.
    """

    def __init__(self, dim: int, num_heads: int = 8, depth: int = 1, k: int = 8, lam: float = 0.5,
                 visual: str = "attention", dropout: float = 0.1, ffn_mult: int = 4,
                 require_positive_pairs: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(BGFormerBlock(dim, num_heads, k, lam, visual, dropout, ffn_mult,
                                                  require_positive_pairs) for _ in range(depth))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) features and (B,) labels -> (B, D)."""
        check_features(x, self.dim, "BGFormer")
        if y is not None and y.ndim != 1:
            raise ValueError(f"BGFormer expects labels of shape (B,) = ({x.shape[0]},), got {tuple(y.shape)}; "
                             "pass class indices, not one-hot or (B, 1) labels (y.argmax(1) or y.flatten())")
        if y is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"features and labels disagree on the batch size: {x.shape[0]} vs {y.shape[0]}")
        for block in self.blocks:
            x = block(x, y)
        return x

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: ``(cat[x, BGF(x, y)], cat[y, y])``, plain half first. Eval: ``(x, y)`` unchanged."""
        if not self.training:
            return x, y
        return torch.cat([x, self(x, y)]), torch.cat([y, y])
