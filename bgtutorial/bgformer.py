"""BGFormer, the Batch-Graph Transformer (Wang, Jiang, Wang, Luo; arXiv 2211.10622).

docs/method.md, section "BGFormer". On the pooled features X (B, D) of a mini-batch, one block does

    X̂ = LN(X)
    V = SSA(X̂)                  structure-constrained attention: each query's softmax runs over K keys only
    S = Â (X̂ W)                 label-graph propagation, Â = D^-1/2 (Y + I) D^-1/2
    X ← X + λ·P_v(V) + (1-λ)·P_s(S)
    X ← X + MLP(LN(X))          pre-norm FFN, hidden 4·D, GELU

Training only, like BatchFormer: ``augment(x, y)`` returns ``(cat[x, BGF(x, y)], cat[y, y])``
with the plain half first; at evaluation it is the identity, so no labels are needed at test.

The authors' compiled code of that period, shipped without source in SissiW/DyBGR under
``net/__pycache__/`` (dates: the source-file times in the .pyc headers, UTC; git cannot order
them, one upload added them all in 2024), holds two visual paths:

* ``SGFormer.cpython-39.pyc`` (2022-09-30), ``Attention_VG.forward`` (source lines 64-91): Q/K/V
  from one packed linear, per head and per query the K largest logits ``q·kᵀ/√d``, softmax over
  those, attention dropout, scatter into a zero matrix, ``attn @ v``, output projection.
* ``SGFormer2.cpython-39.pyc`` (2022-10-08), ``Attention_VG.forward`` (lines 61-84): no Q/K/V and
  no softmax; the K largest entries of each row of ``X̂X̂ᵀ`` (a plain ``topk``, the node itself not
  forced in), min-max rescaled to [0, 1], attention dropout, scattered into zeros, output ``A X̂``.
  Its ``Block`` (lines 121-149) sends both paths through one shared output projection.

The newest wrapper, ``model_SGFormer.cpython-39.pyc`` (2022-10-26, weeks before the arXiv
version), imports ``from .SGFormer2 import *`` (source line 6) and builds its blocks on the 384-d
ViT-S feature: the model it builds uses the min-max block, and no compiled wrapper in the
repository imports ``SGFormer``. Which block produced the published figures is not known.

``visual="attention"`` (Q/K/V, ``SGFormer``) is *our* default: it is the self-attention that the
abstract's "structure-constrained self-attention" names, its graph is learned, and its output is
a convex combination of values, so the block's scale does not grow with K (the min-max weights
of a row sum to anywhere between 1 and K-1). ``visual="minmax"`` gives ``SGFormer2``'s block as
written: with it, ``graph``, ``tied_projection`` and ``self_loops`` default to that file's
choices. Every choice is a constructor option:

* ``graph``: which K keys a query keeps. ``"logits"`` (default for attention): per head and per
  query, the K largest attention logits; the graph is learned and differs from head to head.
  ``"features"``: one fixed kNN graph on the block's input ``LN(X)·LN(X)ᵀ``, shared by all heads
  (``bgtutorial.graph.visual_graph``); the only graph the min-max path can use.
* ``self_loops``: whether the feature graph forces each node into its own neighbour list
  (default True for attention's feature graph, False for min-max, as ``SGFormer2`` line 71).
* ``tied_projection``: one output projection P for both paths, ``X ← X + λ·P(V) + (1-λ)·P(S)``,
  as ``SGFormer2``'s ``Block`` (``self.proj`` + ``self.proj_drop``, lines 136-137, 143-144),
  with a bias on the label path's W (``Attention_SG.qkv``, built with ``qkv_bias=True`` by
  ``model_SGFormer`` line 51; with separate projections that bias folds into P_s's, since each
  row of Â sums to 1). Default: True for min-max, False for attention (``SGFormer``'s attention
  and label path each end in their own projection).
* ``attention_dropout``: dropout on the visual weights, Q/K/V or min-max (both files apply
  ``attn_drop`` there); default: ``dropout``.

The follow-up's CUB run (DyBGR ``train.sh``) is ``k=30, lam=0.3, depth=2, dropout=0.0``.

Deviations from the compiled ``Attention_VG.forward`` of both files, with reasons:

* K is ``min(k, B)`` for each call; their code overwrites its stored K with B the first time a
  batch is smaller than K (and whenever B == 100), which then sticks for later batches.
* Ties are broken towards the lower key index (a stable descending sort), so the kept set never
  depends on the device or the ``topk`` kernel; ``torch.topk``'s choice among equal values is
  unspecified.
* Q/K/V: their attention ends with its own output projection and dropout; here the block's
  ``P_v`` (linear + dropout) plays that role, which is the same computation.
* Min-max: a row whose kept similarities are all equal (e.g. K = 1) gets weight 1 on each kept
  entry; theirs divides 0 by 0 there (NaN).
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

    Source: SissiW/DyBGR, compiled ``net/SGFormer.py`` (``SGFormer.cpython-39.pyc``),
    ``Attention_VG.forward`` lines 76-82.
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

    With ``adj=None`` (the default, as ``SGFormer``'s ``Attention_VG``) each head picks, for each query, the K
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
    """The authors' ``SGFormer2`` visual path: ``A X̂`` with A the kept similarities min-max rescaled per row.

    (B, D), graph (B, B) bool -> (B, D). No parameters, no softmax; non-edges get weight 0, the
    row's least similar kept entry 0 and its most similar 1, so a row's weights sum to anywhere
    between 1 and K-1. A row whose kept scores are all equal gets weight 1 on each of its edges.
    Dropout (probability ``dropout``, in training) acts on the weights, as ``SGFormer2`` line 80.
    """

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout

    def forward(self, x: torch.Tensor, adj: torch.Tensor,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, D), adj (B, B) bool -> (B, D), and the weights as (1, B, B) when ``return_attention``."""
        sim = x @ x.T                                                      # (B, B)
        lo = sim.masked_fill(~adj, float("inf")).amin(1, keepdim=True)     # (B, 1) over kept entries
        hi = sim.masked_fill(~adj, float("-inf")).amax(1, keepdim=True)
        span = hi - lo
        a = torch.where(span > 0, (sim - lo) / span.clamp_min(1e-12), torch.ones_like(sim)) * adj
        a = F.dropout(a, self.dropout, self.training)                      # (B, B), still 0 off the graph
        out = a @ x                                                        # (B, D)
        return (out, rearrange(a, "i j -> 1 i j")) if return_attention else out


class SemanticPropagation(nn.Module):
    """Label-graph propagation ``Â (X W + b)``: (B, D), (B, B) float -> (B, D); ``bias=False`` drops b."""

    def __init__(self, dim: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, a_norm: torch.Tensor) -> torch.Tensor:
        return a_norm.to(x.dtype) @ self.weight(x)


def _check_options(lam: float, visual: str, graph: str | None, self_loops: bool | None,
                   tied_projection: bool | None) -> tuple[str, bool, bool]:
    """Validate the block's options; return the graph, self-loop and tied-projection choices actually used."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if visual not in VISUALS:
        raise ValueError(f"visual must be 'attention' or 'minmax', got {visual!r}")
    if graph is None:
        graph = "logits" if visual == "attention" else "features"
    if graph not in GRAPHS:
        raise ValueError(f"graph must be 'logits' or 'features', got {graph!r}")
    if visual == "minmax" and graph == "logits":
        raise ValueError("visual='minmax' has no attention logits to choose a graph from: use graph='features' "
                         "(or leave graph=None)")
    if graph == "logits" and self_loops:
        raise ValueError("self_loops applies to the fixed feature graph only (the logits graph never forces a "
                         "node in): use graph='features', or leave self_loops=None")
    self_loops = (visual == "attention") if self_loops is None else self_loops
    tied_projection = (visual == "minmax") if tied_projection is None else tied_projection
    return graph, self_loops, tied_projection


class BGFormerBlock(nn.Module):
    """One BGFormer block (see the module docstring): (B, D), labels (B,) or None -> (B, D).

    ``graph``, ``self_loops`` and ``tied_projection`` left at None take the visual path's own
    choices: the logits graph and two projections for ``visual="attention"``; the feature graph
    without forced self-loops and one shared projection for ``visual="minmax"`` (``SGFormer2``).
    ``attention_dropout`` (None: ``dropout``) acts on the visual weights.
    """

    def __init__(self, dim: int, num_heads: int = 8, k: int = 8, lam: float = 0.5, visual: str = "attention",
                 dropout: float = 0.1, ffn_mult: int = 4, require_positive_pairs: bool = True,
                 graph: str | None = None, tied_projection: bool | None = None, self_loops: bool | None = None,
                 attention_dropout: float | None = None) -> None:
        super().__init__()
        self.graph_kind, self.self_loops, self.tied_projection = _check_options(lam, visual, graph, self_loops,
                                                                                tied_projection)
        self.k, self.lam, self.require_positive_pairs = k, lam, require_positive_pairs
        attn_drop = dropout if attention_dropout is None else attention_dropout
        self.norm = nn.LayerNorm(dim)
        self.visual = StructureConstrainedAttention(dim, num_heads, k, attn_drop) if visual == "attention" \
            else MinMaxGraphAggregation(attn_drop)
        self.semantic = SemanticPropagation(dim, bias=self.tied_projection)
        self.proj_visual = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        # tied: one module under both names, SGFormer2's single ``proj`` + ``proj_drop`` (each call its own mask)
        self.proj_semantic = self.proj_visual if self.tied_projection else \
            nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_mult * dim, dim), nn.Dropout(dropout))

    def graph(self, xn: torch.Tensor, y: torch.Tensor | None) -> BatchGraph:
        """The fixed graphs of this block: the label graph of ``y`` (B,) and, with ``graph="features"``,
        the kNN graph of ``xn = LN(x)`` (B, D); with ``graph="logits"`` the attention picks its own."""
        xg = xn.detach() if self.graph_kind == "features" else None
        return BatchGraph.build(xg, y if self.lam < 1 else None, self.k, self.require_positive_pairs,
                                self.self_loops)

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
            neighbours per node in the feature kNN graph (``graph="features"``; self included when
            ``self_loops``); ``k >= B`` means the full graph.
        lam: λ, weight of the visual path against the label path (0.1-0.7 in the authors' runs).
        visual: "attention" (default) or "minmax" (see the module docstring).
        dropout: on the projections and the FFN (and on the visual weights unless ``attention_dropout``).
        ffn_mult: FFN hidden width as a multiple of D.
        require_positive_pairs: raise on a batch in which no two samples share a label.
        graph: "logits" (per-head top-K of the attention logits, ``SGFormer``), "features"
            (one fixed kNN graph on LN(x)), or None: "logits" for attention, "features" for minmax.
        tied_projection: one output projection for the visual and the label path, with a bias on
            the label path's W (``SGFormer2``'s block); None: True for minmax, False for attention.
        self_loops: the feature graph keeps each node as its own neighbour; None: True for
            attention, False for minmax (``SGFormer2``'s plain top-K). Feature graph only.
        attention_dropout: dropout on the visual weights (Q/K/V softmax or min-max); None: ``dropout``.

    The follow-up's CUB setting (DyBGR ``train.sh``) is ``BGFormer(dim, k=30, lam=0.3, depth=2, dropout=0.0)``.
    """

    def __init__(self, dim: int, num_heads: int = 8, depth: int = 1, k: int = 8, lam: float = 0.5,
                 visual: str = "attention", dropout: float = 0.1, ffn_mult: int = 4,
                 require_positive_pairs: bool = True, graph: str | None = None,
                 tied_projection: bool | None = None, self_loops: bool | None = None,
                 attention_dropout: float | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(BGFormerBlock(dim, num_heads, k, lam, visual, dropout, ffn_mult,
                                                  require_positive_pairs, graph, tied_projection, self_loops,
                                                  attention_dropout) for _ in range(depth))

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
