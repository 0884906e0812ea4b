"""BGFormer, the Batch-Graph Transformer (Wang, Jiang, Wang, Luo; arXiv 2211.10622).

docs/method.md, section "BGFormer". On the pooled features X (B, D) of a mini-batch, one block does

    X̂ = LN(X)
    V = SSA(X̂)                  structure-constrained attention: each query's softmax runs over K keys only
    S = Â (X̂ W)                 label-graph propagation, Â = D^-1/2 (Y + I) D^-1/2
    X ← X + λ·P_v(V) + (1-λ)·P_s(S)
    X ← X + MLP(LN(X))          pre-norm FFN, hidden 4·D, GELU

Training only, like BatchFormer: ``augment(x, y)`` returns ``(cat[x, BGF(x, y)], cat[y, y])``
with the plain half first; at evaluation it is the identity, so no labels are needed at test.

Which K keys a query keeps is the ``graph`` option:

* ``"logits"`` (default, the authors' code): per head and per query, the K largest attention
  logits ``q·kᵀ/√d``; the graph is *learned* and differs from head to head. Source: the
  authors' compiled code shipped in SissiW/DyBGR, ``net/__pycache__/SGFormer.cpython-39.pyc``,
  class ``Attention_VG``, ``forward`` (source lines 64-91): top-K of the scaled logits, softmax
  over the kept ones, attention dropout, scatter into a zero matrix, ``attn @ v``.
* ``"features"``: one fixed kNN graph on the block's input, ``LN(X)·LN(X)ᵀ``, shared by all
  heads, each node kept as its own neighbour (``bgtutorial.graph.visual_graph``).

and the visual path itself is the ``visual`` option: ``"attention"`` (Q/K/V attention, the
default) or ``"minmax"`` (the authors' Q/K/V-free variant ``SGFormer2``: kept feature
similarities min-max rescaled per row, no softmax, output ``A X̂``; it always uses the
feature graph). The follow-up's CUB run (DyBGR ``train.sh``) is ``k=30, lam=0.3, depth=2,
dropout=0.0``: every option here is a plain constructor argument.

Deviations from the authors' ``Attention_VG.forward``, with reasons:

* K is ``min(k, B)`` for each call; their code overwrites its stored K with B the first time a
  batch is smaller than K (and whenever B == 100), which then sticks for later batches.
* Ties among the logits are broken towards the lower key index (a stable descending sort), so
  the kept set never depends on the device or the ``topk`` kernel; theirs uses ``torch.topk``,
  whose choice among equal values is unspecified.
* Their attention ends with its own output projection and dropout; here the block's ``P_v``
  (linear + dropout) plays that role, which is the same computation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from .batchformer import check_features
from .graph import BatchGraph

__all__ = ["topk_attention_weights", "StructureConstrainedAttention", "MinMaxGraphAggregation",
           "SemanticPropagation", "BGFormerBlock", "BGFormer"]

GRAPHS = ("logits", "features")
VISUALS = ("attention", "minmax")


def topk_attention_weights(logits: torch.Tensor, k: int, dropout_p: float = 0.0,
                           training: bool = False) -> torch.Tensor:
    """Top-K sparse softmax, row by row: logits (..., Q, N) -> weights (..., Q, N).

    Each row keeps its ``min(k, N)`` largest logits, takes the softmax over those only, applies
    dropout (probability ``dropout_p``, in training) to the kept weights and scatters them back
    into zeros: every other entry is exactly 0, and gradients flow only through the kept logits.
    The row's own index is not forced in. Ties: a stable descending sort keeps, among equal
    logits, the one with the lower column index, on every device.

    Source: SissiW/DyBGR, compiled ``net/SGFormer.py``, ``Attention_VG.forward`` lines 76-82.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, logits.shape[-1])
    kept, idx = logits.sort(dim=-1, descending=True, stable=True)
    kept, idx = kept[..., :k], idx[..., :k]                          # (..., Q, K)
    weights = F.dropout(kept.softmax(dim=-1), dropout_p, training)   # (..., Q, K)
    # weights' dtype, not logits': under autocast the softmax runs in float32 on bf16/fp16 logits
    return weights.new_zeros(logits.shape).scatter(-1, idx, weights)  # (..., Q, N)


class StructureConstrainedAttention(nn.Module):
    """Multi-head attention whose softmax runs over K keys per query only: (B, D) -> (B, D).

    With ``adj=None`` (the default, the authors' code) each head picks, for each query, the K
    keys with the largest logits ``q·kᵀ/√d`` (``topk_attention_weights``). With a fixed
    adjacency ``adj`` (B, B) bool, every head attends along its edges instead (softmax over the
    row's edges, dropout on the weights). Returns the concatenated heads (B, D); the block's
    visual projection P_v plays the role of W_O.

    Args:
        dim: feature width D, divisible by ``num_heads``.
        num_heads: H; each head has width d = D / H.
        k: keys kept per query and head in the logits graph (``k >= B``: plain attention).
        dropout: on the attention weights, in training.
    """

    def __init__(self, dim: int, num_heads: int = 8, k: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.num_heads, self.k, self.dropout = num_heads, k, dropout
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)                             # packed W_Q, W_K, W_V, with bias

    def forward(self, x: torch.Tensor, adj: torch.Tensor | None = None,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, D), optional fixed graph adj (B, B) bool -> (B, D), and the weights (H, B, B) when
        ``return_attention`` (row i of head h: how query i draws on each key; exactly 0 off its graph)."""
        q, key, v = rearrange(self.qkv(x), "b (three h d) -> three h b d", three=3, h=self.num_heads)
        logits = einsum(q, key, "h i d, h j d -> h i j") * self.scale     # (H, B, B)
        if adj is None:
            attn = topk_attention_weights(logits, self.k, self.dropout, self.training)
        else:
            attn = logits.masked_fill(~rearrange(adj, "i j -> 1 i j"), float("-inf")).softmax(dim=-1)
            attn = F.dropout(attn, self.dropout, self.training)           # (H, B, B), zero off the graph
        out = rearrange(einsum(attn, v, "h i j, h j d -> h i d"), "h b d -> b (h d)")   # (B, D)
        return (out, attn) if return_attention else out


class MinMaxGraphAggregation(nn.Module):
    """Variant (a) of the authors' code: ``A X̂`` with A the kept similarities min-max rescaled per row.

    (B, D), graph (B, B) bool -> (B, D). No parameters, no softmax; non-edges get weight 0. A row
    whose kept scores are all equal gets weight 1 on each of its edges.
    """

    def forward(self, x: torch.Tensor, adj: torch.Tensor,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, D), adj (B, B) bool -> (B, D), and the weights as (1, B, B) when ``return_attention``."""
        sim = x @ x.T                                                      # (B, B)
        lo = sim.masked_fill(~adj, float("inf")).amin(1, keepdim=True)     # (B, 1) over kept entries
        hi = sim.masked_fill(~adj, float("-inf")).amax(1, keepdim=True)
        span = hi - lo
        a = torch.where(span > 0, (sim - lo) / span.clamp_min(1e-12), torch.ones_like(sim)) * adj
        out = a @ x                                                        # (B, D)
        return (out, rearrange(a, "i j -> 1 i j")) if return_attention else out


class SemanticPropagation(nn.Module):
    """Label-graph propagation ``Â (X W)``: (B, D), (B, B) float -> (B, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, a_norm: torch.Tensor) -> torch.Tensor:
        return a_norm.to(x.dtype) @ self.weight(x)


def _check_options(lam: float, visual: str, graph: str | None) -> str:
    """Validate ``lam``, ``visual`` and ``graph``; return the graph actually used."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if visual not in VISUALS:
        raise ValueError(f"visual must be 'attention' or 'minmax', got {visual!r}")
    if graph is None:
        return "logits" if visual == "attention" else "features"
    if graph not in GRAPHS:
        raise ValueError(f"graph must be 'logits' or 'features', got {graph!r}")
    if visual == "minmax" and graph == "logits":
        raise ValueError("visual='minmax' has no attention logits to choose a graph from: use graph='features' "
                         "(or leave graph=None)")
    return graph


class BGFormerBlock(nn.Module):
    """One BGFormer block (see the module docstring): (B, D), labels (B,) or None -> (B, D).

    ``graph=None`` picks the variant's own graph: "logits" for ``visual="attention"``,
    "features" for ``visual="minmax"``.
    """

    def __init__(self, dim: int, num_heads: int = 8, k: int = 8, lam: float = 0.5, visual: str = "attention",
                 dropout: float = 0.1, ffn_mult: int = 4, require_positive_pairs: bool = True,
                 graph: str | None = None) -> None:
        super().__init__()
        self.graph_kind = _check_options(lam, visual, graph)
        self.k, self.lam, self.require_positive_pairs = k, lam, require_positive_pairs
        self.norm = nn.LayerNorm(dim)
        self.visual = StructureConstrainedAttention(dim, num_heads, k, dropout) if visual == "attention" \
            else MinMaxGraphAggregation()
        self.semantic = SemanticPropagation(dim)
        self.proj_visual = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.proj_semantic = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_mult * dim, dim), nn.Dropout(dropout))

    def graph(self, xn: torch.Tensor, y: torch.Tensor | None) -> BatchGraph:
        """The fixed graphs of this block: the label graph of ``y`` (B,) and, with ``graph="features"``,
        the kNN graph of ``xn = LN(x)`` (B, D); with ``graph="logits"`` the attention picks its own."""
        xg = xn.detach() if self.graph_kind == "features" else None
        return BatchGraph.build(xg, y if self.lam < 1 else None, self.k, self.require_positive_pairs)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, D), labels (B,) -> (B, D); with ``return_attention`` also the visual weights
        (H, B, B) (one matrix per head; (1, B, B) for ``visual="minmax"``)."""
        if y is None and self.lam < 1:
            raise ValueError("BGFormer's semantic path needs the labels y (B,); it runs in training only. "
                             "Pass y, or lam=1 for the visual path alone.")
        xn = self.norm(x)                                                   # X̂ (B, D)
        g = self.graph(xn, y)
        vis, attn = self.visual(xn, g.visual, return_attention=True)        # (B, D), (H, B, B)
        out = x + self.lam * self.proj_visual(vis)
        if self.lam < 1:                                                    # λ = 1 removes the label path exactly
            out = out + (1 - self.lam) * self.proj_semantic(self.semantic(xn, g.semantic_norm))
        out = out + self.ffn(out)                                           # (B, D)
        return (out, attn) if return_attention else out


class BGFormer(nn.Module):
    """``depth`` BGFormer blocks over the batch, with BatchFormer's ``forward``/``augment`` contract.

    Args:
        dim: feature width D.
        num_heads: heads of the structure-constrained attention.
        depth: blocks (1-2 in the authors' runs).
        k: keys kept per query: per head from the attention logits (``graph="logits"``), or
            neighbours per node in the feature kNN graph, self included (``graph="features"``);
            ``k >= B`` means the full graph.
        lam: λ, weight of the visual path against the label path (0.1-0.7 in the authors' runs).
        visual: "attention" (default) or "minmax" (see the module docstring).
        dropout: on the attention weights, the projections and the FFN.
        ffn_mult: FFN hidden width as a multiple of D.
        require_positive_pairs: raise on a batch in which no two samples share a label.
        graph: "logits" (per-head top-K of the attention logits, the authors' code), "features"
            (one fixed kNN graph on LN(x)), or None: "logits" for attention, "features" for minmax.

    The follow-up's CUB setting (DyBGR ``train.sh``) is ``BGFormer(dim, k=30, lam=0.3, depth=2, dropout=0.0)``.
    """

    def __init__(self, dim: int, num_heads: int = 8, depth: int = 1, k: int = 8, lam: float = 0.5,
                 visual: str = "attention", dropout: float = 0.1, ffn_mult: int = 4,
                 require_positive_pairs: bool = True, graph: str | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(BGFormerBlock(dim, num_heads, k, lam, visual, dropout, ffn_mult,
                                                  require_positive_pairs, graph) for _ in range(depth))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, D) features and (B,) labels -> (B, D); with ``return_attention`` also a list with each
        block's visual weights (H, B, B), for plotting the graph each head chose."""
        check_features(x, self.dim, "BGFormer")
        if y is not None and y.ndim != 1:
            raise ValueError(f"BGFormer expects labels of shape (B,) = ({x.shape[0]},), got {tuple(y.shape)}; "
                             "pass class indices, not one-hot or (B, 1) labels (y.argmax(1) or y.flatten())")
        if y is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"features and labels disagree on the batch size: {x.shape[0]} vs {y.shape[0]}")
        maps = []
        for block in self.blocks:
            x, attn = block(x, y, return_attention=True)
            maps.append(attn)
        return (x, maps) if return_attention else x

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: ``(cat[x, BGF(x, y)], cat[y, y])``, plain half first. Eval: ``(x, y)`` unchanged."""
        if not self.training:
            return x, y
        return torch.cat([x, self(x, y)]), torch.cat([y, y])
