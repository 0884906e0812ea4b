"""Scoring a network on a dataset: the figures a run's history records.

* :func:`embed_dataset`: a whole dataset's embeddings (or head outputs and backbone features) in eval mode.
* :func:`evaluate`: Recall@1/2/4/8, MAP@R and NMI of a network on a dataset, by cosine; for a config
  with the hyperbolic loss, both of Hyp-ViT's evaluations (:func:`hyperbolic_metrics`), and for an
  unshared module head that head's figures too. A diverged (non-finite) embedding is refused.
* :func:`hyperbolic_metrics`, :func:`poincare_metrics`: ranking by Poincaré distance in the ball.

The metrics themselves (kNN, Recall@K, MAP@R, NMI) live in :mod:`bgtutorial.metrics`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .metrics import retrieval_metrics
from .models import RetrievalNet
from .utils import autocast_dtype, bars_disabled

if TYPE_CHECKING:
    from .config import Config

__all__ = ["embed_dataset", "evaluate", "hyperbolic_metrics", "poincare_metrics"]


@torch.no_grad()
def embed_dataset(model: RetrievalNet, dataset: Dataset, batch_size: int = 256, dev: torch.device | None = None,
                  num_workers: int = 0, progress: bool = False, outputs: str = "embedding"):
    """Embeddings (N, E) and labels (N,) of a whole dataset, in eval mode, on CPU.

    ``outputs="head_and_features"`` returns ``(head output (N, E) before any normalisation,
    backbone features (N, D), labels)`` instead: what the hyperbolic tier evaluates.
    ``outputs="module_head"`` returns the embeddings (N, E) that the module stream's own head
    (``shared_head=False``) gives to the *plain* features, which never went through the batch
    module, and the labels: how that head would do at test time, where the module is dropped.
    """
    if outputs not in ("embedding", "head_and_features", "module_head"):
        raise ValueError(f"outputs must be 'embedding', 'head_and_features' or 'module_head', got {outputs!r}")
    if outputs == "module_head" and getattr(model, "module_head", None) is None:
        raise ValueError("outputs='module_head' needs a network with its own module head (shared_head=False)")
    dev = dev or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda", generator=torch.Generator().manual_seed(0))
    heads, feats, labels = [], [], []
    dtype = autocast_dtype(dev)
    for x, y in tqdm(loader, desc="embed", leave=False, disable=bars_disabled(progress)):
        x = x.to(dev, non_blocking=True)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            if outputs == "embedding":
                heads.append(model(x).float().cpu())
            elif outputs == "module_head":
                heads.append(model.embed(model.features(x), head="module").float().cpu())   # (b, E)
            else:
                f = model.features(x)
                heads.append(model.head(f).float().cpu())
                feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    if outputs in ("embedding", "module_head"):
        return torch.cat(heads), torch.cat(labels)
    return torch.cat(heads), torch.cat(feats), torch.cat(labels)


def poincare_metrics(z: torch.Tensor, labels: torch.Tensor, c: float, with_nmi: bool = True) -> dict[str, float]:
    """Recall@1/2/4/8 and MAP@R of points ``z`` (N, E) inside the Poincaré ball, ranked by Poincaré
    distance (Hyp-ViT's helpers.py L19-32), and NMI of k-means on the ball's coordinates."""
    from .losses import poincare_distance
    from .metrics import map_at_r, nmi, recall_at_k
    from .ranking import ranking_from_distances

    rmax = int(labels.unique(return_counts=True)[1].max()) - 1
    zd = z.double()
    nn_ = ranking_from_distances(lambda a, b: poincare_distance(zd[a:b], zd, c), z.shape[0],
                                 min(max(8, rmax), z.shape[0] - 1))      # ties kept, as recall_at_k counts them
    out = {f"R@{k}": v for k, v in recall_at_k(z, labels, neighbours=nn_).items()}
    out["MAP@R"] = map_at_r(z, labels, neighbours=nn_)
    if with_nmi:
        out["NMI"] = nmi(z, labels)
    return out


def hyperbolic_metrics(head: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, c: float, clip_r: float,
                       with_nmi: bool = True) -> dict[str, float]:
    """Hyp-ViT's two evaluations (helpers.py L19-53): Recall@K and MAP@R by Poincaré distance on the
    head output (N, E) mapped into the ball (the main figures, with NMI of k-means on the ball's
    coordinates; :func:`poincare_metrics`), and by cosine on the backbone feature (N, D) (keys
    prefixed ``feat_``)."""
    from .losses import to_poincare

    out = poincare_metrics(to_poincare(head.float(), c, clip_r), labels, c, with_nmi)
    plain = retrieval_metrics(torch.nn.functional.normalize(features.float(), dim=1), labels, with_nmi=False)
    out.update({f"feat_{k}": v for k, v in plain.items()})
    return out


def evaluate(model: RetrievalNet, dataset: Dataset, batch_size: int = 256, with_nmi: bool = True,
             dev: torch.device | None = None, cfg: Config | None = None,
             class_counts: list[int] | None = None) -> dict[str, float]:
    """Recall@1/2/4/8, MAP@R (and NMI) of the model on a test set (cosine of the embeddings);
    for a config with the hyperbolic loss, both of Hyp-ViT's evaluations (:func:`hyperbolic_metrics`).
    This is how a run's history scores it; ``experiments.head_metrics`` and ``embed_run`` follow it.

    A network with an unshared module head (``shared_head=False``) also gets that head's metrics on
    the same plain test features, keys prefixed ``module_head_`` (by Poincaré distance for a
    hyperbolic run): the history then holds the train/test mismatch per epoch, without weights
    (:func:`bgtutorial.experiments.head_metrics` computes the same from a checkpoint).

    A classification config (``glyphs-lt``) is scored by top-1 accuracy instead, overall and per
    Many / Medium / Few group of ``class_counts`` (:func:`bgtutorial.longtail.classification_metrics`).

    Raises ``FloatingPointError`` when an embedding is not finite (a diverged model would
    otherwise find each query's twin NaN and score a perfect Recall@1).
    """
    if cfg is not None and cfg.classification:
        from .longtail import classification_metrics

        return classification_metrics(model, dataset, class_counts, batch_size, dev)
    module_head = getattr(model, "module_head", None)
    if cfg is not None and cfg.loss == "hyperbolic":
        from .losses import to_poincare

        head, feats, y = embed_dataset(model, dataset, batch_size, dev, outputs="head_and_features")
        _refuse_non_finite(torch.cat([head, feats], dim=1))
        out = hyperbolic_metrics(head, feats, y, cfg.curvature, cfg.clip_r, with_nmi)
        if module_head is not None:                       # h' on the plain features, in the same ball
            w, b = (t.detach().float().cpu() for t in (module_head.weight, module_head.bias))
            z = to_poincare(torch.nn.functional.linear(feats, w, b), cfg.curvature, cfg.clip_r)   # (N, E)
            _refuse_non_finite(z)
            out.update({f"module_head_{k}": v for k, v in poincare_metrics(z, y, cfg.curvature, False).items()})
        return out
    emb, y = embed_dataset(model, dataset, batch_size, dev)
    _refuse_non_finite(emb)
    out = retrieval_metrics(emb, y, with_nmi=with_nmi)
    if module_head is not None:                          # shared_head=False: the module stream's own head h'
        module_emb, y = embed_dataset(model, dataset, batch_size, dev, outputs="module_head")
        _refuse_non_finite(module_emb)                       # ... on plain features (the train/test mismatch)
        out.update({f"module_head_{k}": v for k, v in retrieval_metrics(module_emb, y, with_nmi=False).items()})
    return out


def _refuse_non_finite(emb: torch.Tensor) -> None:
    bad = ~torch.isfinite(emb).all(dim=1)                        # (N,)
    if bad.any():
        raise FloatingPointError(f"{int(bad.sum())} of {len(emb)} test embeddings are NaN or inf: the model "
                                 "diverged; lower lr and train again (--force)")
