"""Metric-learning losses: Proxy-Anchor (Kim et al., CVPR 2020) by default, multi-similarity as an option.

Both come from pytorch-metric-learning. :class:`MetricLoss` adds what the batch modules
need: with a doubled batch (plain half first, module half second) the loss is either one
loss over all 2B samples (BatchFormer's shared classifier, the default) or
``α·L(plain) + (1-α)·L(module)`` when ``plain_weight=α`` is given (BGFormer's follow-up).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MetricLoss", "LOSSES"]

LOSSES = ("proxy_anchor", "multi_similarity")


class MetricLoss(nn.Module):
    """Loss on L2-normalised embeddings (N, E) and labels (N,).

    Args:
        name: "proxy_anchor" (margin δ=0.1, α=32 as in Kim et al.) or "multi_similarity"
            (α=2, β=50, base 0.5 with its miner, ε=0.1, as in Wang et al. 2019).
        num_classes: training classes (proxies for Proxy-Anchor).
        embed_dim: embedding size E.
        plain_weight: ``None`` for one loss over the whole (possibly doubled) batch, or α in
            [0, 1] to weight the plain half against the module half.
    """

    def __init__(self, name: str, num_classes: int, embed_dim: int, margin: float = 0.1, alpha: float = 32.0,
                 plain_weight: float | None = None) -> None:
        super().__init__()
        from pytorch_metric_learning import losses, miners

        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
        if plain_weight is not None and not 0.0 <= plain_weight <= 1.0:
            raise ValueError(f"plain_weight must be in [0, 1] or None, got {plain_weight}")
        self.name, self.plain_weight = name, plain_weight
        self.miner = None
        if name == "proxy_anchor":
            self.loss = losses.ProxyAnchorLoss(num_classes, embed_dim, margin=margin, alpha=alpha)
        else:
            self.loss = losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
            self.miner = miners.MultiSimilarityMiner(epsilon=0.1)

    def proxy_parameters(self) -> list[nn.Parameter]:
        """Parameters of the loss itself (the proxies), trained at their own larger learning rate."""
        return list(self.loss.parameters())

    def _one(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = emb.float()
        return self.loss(emb, y, self.miner(emb, y)) if self.miner is not None else self.loss(emb, y)

    def forward(self, emb: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """``batch_size`` is B of the plain half; needed only with ``plain_weight``."""
        if self.plain_weight is None or batch_size is None or emb.shape[0] == batch_size:
            return self._one(emb, y)
        a = self.plain_weight
        return a * self._one(emb[:batch_size], y[:batch_size]) + (1 - a) * self._one(emb[batch_size:], y[batch_size:])
