"""BatchFormer (Hou, Yu, Tao, CVPR 2022): a Transformer encoder over the *batch* dimension.

The B pooled features of a mini-batch become one sequence of length B, so every sample
attends to every other one. Training only: :meth:`BatchFormer.augment` returns the plain
features followed by the transformed ones (labels duplicated), and the same head/loss
sees both halves; at evaluation it is the identity, so the test-time network never calls
the module (docs/method.md, "BatchFormer").

Each layer is the post-norm encoder layer of the authors' code
(``torch.nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=D, dropout=0.5)``)
written out with einops and ``scaled_dot_product_attention``, and initialised as that layer is:
``nn.MultiheadAttention`` draws its packed Q/K/V weight Xavier-uniform and zeroes the Q/K/V and
output-projection biases; the FFN, the output-projection weight and the LayerNorms keep
``nn.Linear``'s and ``nn.LayerNorm``'s own initialisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["BatchFormer", "BatchFormerLayer"]


def check_features(x: torch.Tensor, dim: int, who: str) -> None:
    """Raise a clear error unless ``x`` is a (B, dim) batch of pooled features."""
    if x.ndim != 2:
        raise ValueError(f"{who} expects pooled features of shape (B, {dim}), got {tuple(x.shape)}; "
                         "pool the backbone's feature map first")
    if x.shape[1] != dim:
        raise ValueError(f"{who} was built for feature width {dim} but got width {x.shape[1]}; "
                         f"build it with dim={x.shape[1]} (the backbone's pooled feature size)")


class BatchFormerLayer(nn.Module):
    """One post-norm encoder layer across the batch: (B, D) -> (B, D).

    ``x = LN1(x + Drop(MHSA(x)));  x = LN2(x + Drop(W2 Drop(ReLU(W1 x))))``, where the
    attention runs over the B samples (a sequence of length B, one "batch" element). A fresh
    layer starts where ``nn.TransformerEncoderLayer`` does (see :meth:`reset_attention_parameters`).
    """

    def __init__(self, dim: int, num_heads: int = 4, ffn_dim: int | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        ffn_dim = ffn_dim or dim
        self.qkv = nn.Linear(dim, 3 * dim)       # packed W_Q, W_K, W_V: (3D, D)
        self.proj = nn.Linear(dim, dim)          # W_O
        self.ffn1, self.ffn2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.reset_attention_parameters()

    @torch.no_grad()
    def reset_attention_parameters(self) -> None:
        """Initialise the attention as ``nn.MultiheadAttention._reset_parameters`` does: the packed
        W_Q, W_K, W_V (3D, D) Xavier-uniform (bound sqrt(6 / (D + 3D))), their bias and W_O's bias 0."""
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over the batch: (B, D) -> (B, D), before W_O's residual."""
        # (B, 3D) -> three (1, H, B, D/H): the batch is the sequence, one "batch" element
        q, k, v = rearrange(self.qkv(x), "b (three h d) -> three 1 h b d", three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(rearrange(out, "1 h b d -> b (h d)"))    # (B, D)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights (H, B, B) of a batch x (B, D), without dropout: row i of head h says how
        much sample i takes from each of the B samples (rows sum to 1). For pictures; :meth:`attention`
        computes the same inside ``scaled_dot_product_attention``."""
        q, k = rearrange(self.qkv(x), "b (three h d) -> three h b d", three=3, h=self.num_heads)[:2]   # (H, B, d)
        scores = q @ rearrange(k, "h b d -> h d b") / (self.dim // self.num_heads) ** 0.5              # (H, B, B)
        return scores.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attention(x)))                               # (B, D)
        return self.norm2(x + self.drop(self.ffn2(self.drop(F.relu(self.ffn1(x))))))  # (B, D)

    @torch.no_grad()
    def load_from_torch(self, layer: nn.TransformerEncoderLayer) -> "BatchFormerLayer":
        """Copy the weights of a ``torch.nn.TransformerEncoderLayer`` (the authors' module)."""
        self.qkv.weight.copy_(layer.self_attn.in_proj_weight)
        self.qkv.bias.copy_(layer.self_attn.in_proj_bias)
        self.proj.load_state_dict(layer.self_attn.out_proj.state_dict())
        self.ffn1.load_state_dict(layer.linear1.state_dict())
        self.ffn2.load_state_dict(layer.linear2.state_dict())
        self.norm1.load_state_dict(layer.norm1.state_dict())
        self.norm2.load_state_dict(layer.norm2.state_dict())
        return self


class BatchFormer(nn.Module):
    """BatchFormer: ``num_layers`` encoder layers over the batch, (B, D) -> (B, D).

    Args:
        dim: feature width D (the backbone's pooled feature size).
        num_heads: attention heads (4 in the authors' code).
        ffn_dim: FFN hidden width (default D, as in the authors' code).
        dropout: dropout on attention weights, residual branches and FFN (0.5 in their code).
        num_layers: stacked layers (1 in their code).
    """

    def __init__(self, dim: int, num_heads: int = 4, ffn_dim: int | None = None, dropout: float = 0.5,
                 num_layers: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(BatchFormerLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Let every sample attend to the whole batch: (B, D) -> (B, D)."""
        check_features(x, self.dim, "BatchFormer")
        for layer in self.layers:
            x = layer(x)
        return x

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: ``(cat[x, BF(x)], cat[y, y])``, shapes (2B, D), (2B,). Eval: ``(x, y)`` unchanged."""
        if not self.training:
            return x, y
        if y.ndim != 1:
            raise ValueError(f"BatchFormer.augment expects labels of shape (B,) = ({x.shape[0]},), got "
                             f"{tuple(y.shape)}; pass class indices, not one-hot or (B, 1) labels "
                             "(y.argmax(1) or y.flatten())")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"features and labels disagree on the batch size: {x.shape[0]} vs {y.shape[0]}")
        return torch.cat([x, self(x)]), torch.cat([y, y])
