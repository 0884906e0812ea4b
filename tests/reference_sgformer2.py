"""An independent rewrite of the authors' min-max BGFormer block, for the tests.

The BGFormer authors' follow-up repository (SissiW/DyBGR) ships, without source, the compiled
``net/__pycache__/SGFormer2.cpython-39.pyc``; its newest model wrapper, ``model_SGFormer.cpython-39.pyc``,
imports it (source line 6). This file rewrites what that byte code does, read from its disassembly
(``python3.9 -m dis``-style listing of the marshalled code object), with the structure of the original
kept so that each line can be checked against a source line number:

* ``adj_normalization`` (source lines 13-20): ``D = diag(rowsum(A) ** -0.5)``, returns ``(A D)ᵀ D``.
* ``Attention_VG.forward`` (lines 61-84), on ``x`` (1, N, C): ``attn = x @ xᵀ`` (no scale, no
  Q/K/V); K becomes N when K > N or N == 100 (stored, so it sticks); ``torch.topk(attn, K, -1)``;
  the kept values min-max rescaled per row, ``(a - min) / (max - min)``; ``attn_drop``; scattered
  into ``zeros_like(attn)``; returns ``attn @ x``.
* ``Attention_SG.forward`` (lines 96-118): ``feat = qkv(x)`` with ``qkv = Linear(C, C, bias=qkv_bias)``;
  the label-equality matrix plus the identity, normalised by ``adj_normalization``; the result is
  cast to float16 on CUDA (line 111, dropped here: we compare in float32 on the CPU);
  ``einsum("ij,kjl->kil", A, feat)``.
* ``Mlp`` (lines 32-48): ``fc1``, GELU, dropout, ``fc2``, dropout.
* ``Block`` (lines 121-149): ``lam = cfg.lam``; ``norm1``, ``vg``, ``sg``, ``norm2``, ``mlp`` (hidden
  ``dim · mlp_ratio``), one ``proj = Linear(dim, dim)`` and ``proj_drop``; forward:
  ``x_vg = proj_drop(proj(vg(x_norm)))``, ``x_sg = proj_drop(proj(sg(x_norm, label)))``,
  ``x = x + drop_path(lam·x_vg + (1-lam)·x_sg)``, ``x = x + drop_path(mlp(norm2(x)))``.
* ``model_SGFormer.HeadSwitch`` (lines 41-53, 65-70) builds ``depth`` blocks with ``mlp_ratio=4,
  qkv_bias=True, qk_scale=None, drop=0, attn_drop=0, drop_path=0, norm_layer=nn.LayerNorm`` and runs
  them on ``features.unsqueeze(0)`` in training only.

Drop-path is left out (0 in every wrapper). The names below are ours.
"""
import torch
from torch import nn


def symmetric_normalisation(a: torch.Tensor) -> torch.Tensor:
    """``adj_normalization``: (A D)ᵀ D with D = diag(rowsum(A)^-1/2)."""
    d = torch.diag(torch.pow(a.sum(1).float(), -0.5))
    return torch.matmul(torch.matmul(a, d).t(), d)


class MinMaxVisual(nn.Module):
    """``SGFormer2.Attention_VG``: top-K of x xᵀ, min-max rescaled, dropout, scattered, times x."""

    def __init__(self, k: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.k = k
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, n, _ = x.shape
        sim = x @ x.transpose(-2, -1)                                   # (1, N, N)
        weights = torch.zeros_like(sim)
        if self.k > n or n == 100:
            self.k = n
        kept, index = torch.topk(sim, k=self.k, dim=-1)                 # (1, N, K)
        high = kept.max(dim=-1, keepdim=True)[0].repeat(1, 1, self.k)
        low = kept.min(dim=-1, keepdim=True)[0].repeat(1, 1, self.k)
        kept = self.attn_drop((kept - low) / (high - low))
        weights = weights.scatter_(-1, index, kept)
        return weights @ x


class LabelPath(nn.Module):
    """``SGFormer2.Attention_SG``: normalised (same-label + I) graph times a linear map of x."""

    def __init__(self, dim: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        _, n, _ = x.shape
        feat = self.qkv(x)                                              # (1, N, C)
        rows = label.unsqueeze(1).repeat(1, n)                          # [i, j] = y_i
        cols = label.t().repeat(n, 1)                                   # [i, j] = y_j
        same = rows.eq_(cols)
        a = symmetric_normalisation(same + torch.eye(n, n))
        return torch.einsum("ij,kjl->kil", a, feat)


class MinMaxBlock(nn.Module):
    """``SGFormer2.Block`` as ``model_SGFormer`` builds it (no drop-path)."""

    def __init__(self, dim: int, lam: float, k: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.lam = lam
        self.norm1 = nn.LayerNorm(dim)
        self.vg = MinMaxVisual(k, attn_drop)
        self.sg = LabelPath(dim, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)
        x_vg = self.proj_drop(self.proj(self.vg(x_norm)))
        x_sg = self.proj_drop(self.proj(self.sg(x_norm, label)))
        x = x + (self.lam * x_vg + (1 - self.lam) * x_sg)
        return x + self.mlp(self.norm2(x))

    @torch.no_grad()
    def load_from(self, block) -> "MinMaxBlock":
        """Copy the parameters of a ``bgtutorial.bgformer.BGFormerBlock`` built with ``visual="minmax"``."""
        self.norm1.load_state_dict(block.norm.state_dict())
        w = block.semantic.weight                                       # ours without a bias: theirs at 0
        self.sg.qkv.weight.copy_(w.weight)
        self.sg.qkv.bias.copy_(w.bias if w.bias is not None else torch.zeros_like(self.sg.qkv.bias))
        self.proj.load_state_dict(block.proj_visual[0].state_dict())
        self.norm2.load_state_dict(block.ffn[0].state_dict())
        self.fc1.load_state_dict(block.ffn[1].state_dict())
        self.fc2.load_state_dict(block.ffn[4].state_dict())
        return self


def minmax_model(blocks: list[MinMaxBlock], features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``HeadSwitch``'s training branch without the head: (B, C) -> (B, C) through the blocks."""
    x = features.unsqueeze(0)                                           # (1, B, C)
    for block in blocks:
        x = block(x, labels)
    return x.squeeze(0)
