"""Metric-learning losses: Proxy-Anchor (Kim et al., CVPR 2020) by default, multi-similarity as an
option, and Hyp-ViT's hyperbolic pairwise cross-entropy (Ermolov et al., CVPR 2022) for the paper tier;
for long-tailed recognition (``glyphs-lt``), cross-entropy and the Balanced Softmax (Ren et al., NeurIPS
2020) over a classifier's logits (:func:`balanced_softmax_loss`, :class:`ClassifierLoss`).

Proxy-Anchor and multi-similarity come from pytorch-metric-learning; the hyperbolic loss,
which no well-kept library ships, is written here (:class:`HyperbolicPairLoss`). :class:`MetricLoss` adds what the batch modules
need: with a doubled batch (plain half first, module half second) the loss is either one
loss over all 2B samples (BatchFormer's shared classifier, the default) or
``α·L(plain) + (1-α)·L(module)`` when ``plain_weight=α`` is given (BGFormer's follow-up).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MetricLoss", "LOSSES", "HyperbolicPairLoss", "to_poincare", "poincare_distance", "poincare_knn",
           "CLASSIFICATION_LOSSES", "balanced_softmax_loss", "ClassifierLoss"]

LOSSES = ("proxy_anchor", "multi_similarity", "hyperbolic")
#: losses over a classifier's logits (closed-set recognition, ``dataset="glyphs-lt"``)
CLASSIFICATION_LOSSES = ("cross_entropy", "balanced_softmax")


def to_poincare(x: torch.Tensor, c: float = 0.1, clip_r: float | None = 2.3) -> torch.Tensor:
    """Map Euclidean vectors (N, E) into the Poincaré ball of curvature -c: feature clipping to
    norm ``clip_r`` (Guo et al. 2022), then the exponential map at 0, ``tanh(√c|x|) x / (√c|x|)``."""
    norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-5)
    if clip_r is not None:
        x = x * torch.clamp(clip_r / norm, max=1.0)
        norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-5)
    sc = c ** 0.5
    y = torch.tanh(sc * norm) * x / (sc * norm)
    return y * torch.clamp((1 - 1e-3) / (sc * y.norm(dim=-1, keepdim=True).clamp_min(1e-5)), max=1.0)  # stay inside


def poincare_distance(x: torch.Tensor, y: torch.Tensor, c: float = 0.1) -> torch.Tensor:
    """Pairwise Poincaré distances (N, M): ``(2/√c) artanh(√c |(-x) ⊕_c y|)`` with Möbius addition ⊕_c."""
    sc = c ** 0.5
    xy = x @ y.T                                                    # (N, M)
    x2 = (x * x).sum(-1, keepdim=True)                              # (N, 1)
    y2 = (y * y).sum(-1, keepdim=True).T                            # (1, M)
    # |(-x) ⊕ y|² written with inner products only
    num = (1 - 2 * c * xy + c * y2) ** 2 * x2 - 2 * (1 - 2 * c * xy + c * y2) * (1 - c * x2) * xy \
        + (1 - c * x2) ** 2 * y2
    den = (1 - 2 * c * xy + c ** 2 * x2 * y2) ** 2
    norm = (num.clamp_min(1e-15) / den.clamp_min(1e-15)).sqrt()   # clamp: finite gradient at d(x, x) = 0
    return 2 / sc * torch.atanh((sc * norm).clamp(max=1 - 1e-5))


@torch.no_grad()
def poincare_knn(z: torch.Tensor, k: int, c: float = 0.1, chunk_size: int = 1024) -> torch.Tensor:
    """Indices (N, k) of each point's k nearest others by Poincaré distance (self excluded).

    ``z`` (N, E) are points inside the ball (:func:`to_poincare`). Hyp-ViT's evaluation of the
    head output (helpers.py L19-32). Ties are broken by index (stable sort of the distances).
    """
    if not 1 <= k < z.shape[0]:
        raise ValueError(f"k must be in [1, N-1] = [1, {z.shape[0] - 1}], got {k}")
    out = []
    for start in range(0, z.shape[0], chunk_size):
        d = poincare_distance(z[start:start + chunk_size].double(), z.double(), c)     # (n, N)
        rows = torch.arange(d.shape[0])
        d[rows, rows + start] = float("inf")                                           # a query never finds itself
        out.append(torch.sort(d, dim=1, stable=True).indices[:, :k])
    return torch.cat(out)


class HyperbolicPairLoss(nn.Module):
    """Hyp-ViT's pairwise cross-entropy in the Poincaré ball.

    The batch holds P classes with ``m`` consecutive samples each (our m-per-class sampler).
    For every ordered pair of views (i, j), i ≠ j, each class's view i must pick its own view j
    among all classes' views j and the other samples' views i (themselves excluded), with
    logits ``-d(x, y)/τ``. Each pair's cross-entropy is a mean over the P classes; the pairs are
    then summed, as Hyp-ViT's train.py does (L155-161: ``loss += l`` over the 9·8 = 72 pairs),
    or averaged with ``reduction="mean"``. The sum matters beside gradient-norm clipping: it
    makes the gradient m(m-1) times larger than the mean's, so the clip at 3 bites as in Hyp-ViT.
    """

    def __init__(self, m: int, tau: float = 0.2, c: float = 0.1, clip_r: float | None = 2.3,
                 reduction: str = "sum") -> None:
        super().__init__()
        if m < 2:
            raise ValueError(f"the hyperbolic pair loss needs m >= 2 samples per class, got {m}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' (Hyp-ViT) or 'mean', got {reduction!r}")
        self.m, self.tau, self.c, self.clip_r, self.reduction = m, tau, c, clip_r, reduction

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from einops import rearrange

        if emb.shape[0] % self.m:
            raise ValueError(f"batch of {emb.shape[0]} is not P classes x m={self.m} samples")
        views = rearrange(to_poincare(emb.float(), self.c, self.clip_r), "(p m) e -> m p e", m=self.m)
        labels = rearrange(y, "(p m) -> p m", m=self.m)
        if not (labels == labels[:, :1]).all():
            raise ValueError("the hyperbolic pair loss expects m consecutive samples of one class (MPerClassBatchSampler)")
        p = views.shape[1]
        target = torch.arange(p, device=emb.device)
        self_mask = torch.eye(p, device=emb.device, dtype=torch.bool)
        total = emb.new_zeros(())
        for i in range(self.m):
            same = -poincare_distance(views[i], views[i], self.c) / self.tau              # (P, P)
            same = same.masked_fill(self_mask, float("-inf"))
            for j in range(self.m):
                if i != j:
                    cross = -poincare_distance(views[i], views[j], self.c) / self.tau     # (P, P)
                    total = total + F.cross_entropy(torch.cat([cross, same], 1), target)
        return total if self.reduction == "sum" else total / (self.m * (self.m - 1))


class MetricLoss(nn.Module):
    """Loss on L2-normalised embeddings (N, E) and labels (N,).

    Args:
        name: "proxy_anchor" (margin δ=0.1, α=32 as in Kim et al.) or "multi_similarity"
            (α=2, β=50, base 0.5 with its miner, ε=0.1, as in Wang et al. 2019).
        num_classes: training classes (proxies for Proxy-Anchor).
        embed_dim: embedding size E.
        plain_weight: ``None`` for one loss over the whole (possibly doubled) batch, or α in
            [0, 1] to weight the plain half against the module half (the hyperbolic loss
            always scores the halves apart, equally weighted unless α is given).
        m, tau, c, clip_r: the hyperbolic loss's samples per class, temperature, curvature and
            clipping radius (Hyp-ViT's τ=0.2, c=0.1, r=2.3).
        pair_reduction: the hyperbolic loss's reduction over view pairs ("sum" as Hyp-ViT, or "mean").
        separate_module_loss: the module half gets a loss of its own (its own proxies, drawn
            independently), for a network whose module stream has its own head (``shared_head=False``):
            ``α·L(plain) + (1-α)·L'(module)`` with α = ``plain_weight``, or 0.5 when it is None (the
            mean of the two halves, as a cross-entropy averaged over the doubled batch would be).
    """

    def __init__(self, name: str, num_classes: int, embed_dim: int, margin: float = 0.1, alpha: float = 32.0,
                 plain_weight: float | None = None, m: int = 2, tau: float = 0.2, c: float = 0.1,
                 clip_r: float | None = 2.3, pair_reduction: str = "sum", separate_module_loss: bool = False) -> None:
        super().__init__()
        from pytorch_metric_learning import losses, miners

        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
        if plain_weight is not None and not 0.0 <= plain_weight <= 1.0:
            raise ValueError(f"plain_weight must be in [0, 1] or None, got {plain_weight}")
        self.name, self.plain_weight = name, plain_weight
        self.miner = None

        def make() -> nn.Module:
            if name == "proxy_anchor":
                return losses.ProxyAnchorLoss(num_classes, embed_dim, margin=margin, alpha=alpha)
            if name == "hyperbolic":
                return HyperbolicPairLoss(m, tau, c, clip_r, pair_reduction)
            return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)

        self.loss = make()
        if name == "hyperbolic" and plain_weight is None:   # the two halves each hold P groups of m: score them apart
            self.plain_weight = 0.5
        if name == "multi_similarity":
            self.miner = miners.MultiSimilarityMiner(epsilon=0.1)
        #: the module half's own loss (own proxies) when ``separate_module_loss``, else None
        self.module_loss = make() if separate_module_loss else None
        #: ``(plain, module)`` losses of the last doubled batch's halves, detached; else None
        self.last_parts: tuple[torch.Tensor, torch.Tensor] | None = None
        if separate_module_loss and self.plain_weight is None:
            self.plain_weight = 0.5

    def proxy_parameters(self) -> list[nn.Parameter]:
        """Parameters of the loss itself (the proxies), trained at their own larger learning rate."""
        return list(self.loss.parameters()) + (list(self.module_loss.parameters()) if self.module_loss is not None else [])

    def _one(self, emb: torch.Tensor, y: torch.Tensor, loss: nn.Module | None = None) -> torch.Tensor:
        emb, loss = emb.float(), self.loss if loss is None else loss
        return loss(emb, y, self.miner(emb, y)) if self.miner is not None else loss(emb, y)

    def forward(self, emb: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """``batch_size`` is B of the plain half; needed with ``plain_weight`` or ``separate_module_loss``.

        With a doubled batch (a batch module's training step) :attr:`last_parts` then holds the
        loss of each half, ``(plain, module)`` without gradients: the training loss can fall
        while the plain half's, the one that matters at test time, does not (BGFormer's label
        graph lets its half cluster by class on any input; docs/gpu-runs.md)."""
        if self.module_loss is not None and batch_size is None:
            raise ValueError("separate_module_loss needs batch_size, the size B of the plain half")
        doubled = batch_size is not None and emb.shape[0] > batch_size
        self.last_parts = None
        if self.plain_weight is None or not doubled:
            total = self._one(emb, y)
            if doubled:                   # one loss over both halves: score each apart too, for the log
                with torch.no_grad():
                    self.last_parts = (self._one(emb[:batch_size].detach(), y[:batch_size]).detach(),
                                       self._one(emb[batch_size:].detach(), y[batch_size:]).detach())
            return total
        a = self.plain_weight
        plain = self._one(emb[:batch_size], y[:batch_size])
        module = self._one(emb[batch_size:], y[batch_size:], self.module_loss)
        self.last_parts = (plain.detach(), module.detach())
        return a * plain + (1 - a) * module


def balanced_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, class_counts) -> torch.Tensor:
    """The Balanced Softmax loss (Ren et al., NeurIPS 2020): cross-entropy of the logits shifted by the log
    of the training class prior, ``CE(z + log n, y)`` with ``n[c]`` the training images of class c.

    ``logits`` (B, C), ``targets`` (B,) class indices, ``class_counts`` C positive counts (a sequence
    or a tensor); the mean over the batch. Adding ``log n`` is the same as adding ``log(n / sum n)``:
    a constant per row cancels in the softmax. At test time the plain logits are used (no shift).
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float32, device=logits.device)
    if counts.ndim != 1 or counts.shape[0] != logits.shape[-1]:
        raise ValueError(f"class_counts must hold one count per class ({logits.shape[-1]}), got shape "
                         f"{tuple(counts.shape)}")
    if not bool((counts > 0).all()):
        raise ValueError("class_counts must be > 0 for every class (log 0 would remove a class from the softmax)")
    return F.cross_entropy(logits.float() + counts.log(), targets)


class ClassifierLoss(nn.Module):
    """Cross-entropy or Balanced Softmax on logits (N, C), with :class:`MetricLoss`'s interface for the engine.

    A doubled batch (plain half first, BatchFormer half second, labels repeated) is one loss averaged
    over all 2B rows, both halves through the one shared classifier; with ``plain_weight=α``,
    ``α·L(plain) + (1-α)·L(module)``. :attr:`last_parts` then holds each half's loss. No proxies.
    """

    def __init__(self, name: str, class_counts=None, plain_weight: float | None = None) -> None:
        super().__init__()
        if name not in CLASSIFICATION_LOSSES:
            raise ValueError(f"unknown classification loss {name!r}; choose one of {', '.join(CLASSIFICATION_LOSSES)}")
        if name == "balanced_softmax" and class_counts is None:
            raise ValueError("the balanced_softmax loss needs class_counts, the training images per class")
        self.name, self.plain_weight = name, plain_weight
        self.class_counts = None if class_counts is None else [int(n) for n in class_counts]
        self.last_parts: tuple[torch.Tensor, torch.Tensor] | None = None

    def proxy_parameters(self) -> list[nn.Parameter]:
        """None: a classifier's weights live in the network (its head)."""
        return []

    def _one(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.name == "balanced_softmax":
            return balanced_softmax_loss(logits, y, self.class_counts)
        return F.cross_entropy(logits.float(), y)

    def forward(self, logits: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """``batch_size`` is B of the plain half; a longer ``logits`` is a doubled batch."""
        doubled = batch_size is not None and logits.shape[0] > batch_size
        self.last_parts = None
        if not doubled:
            return self._one(logits, y)
        plain, module = self._one(logits[:batch_size], y[:batch_size]), self._one(logits[batch_size:], y[batch_size:])
        self.last_parts = (plain.detach(), module.detach())
        if self.plain_weight is None:
            return self._one(logits, y)
        return self.plain_weight * plain + (1 - self.plain_weight) * module
