"""Is a trained BatchFormer's attention organised by class, or drawn to a few "sink" samples? Calibrated.

Notebook 02 reads one trained module's attention on one batch: the share of each row's attention on
its own class, and the share of all attention taken by the m most-read samples (the keys every row
reads, whatever its class: attention sinks, Xiao et al. 2023, Darcet et al. 2023). One batch of one
run cannot say whether a share is large: an *untrained* module also attends unevenly, since its
random projections favour some features. This module puts the two side by side, over several batches
and seeds: the trained module of each seed's run, and untrained modules of the same shape on the same
features. A reading is the trained value against the untrained ones' range.

``python -m bgtutorial.attention_stats --runs runs/study --seeds 0 1 2 3 4 --batches 5`` reads the
``glyphs-batchformer-noise0-seed<s>`` runs that ``make studies`` trains (their ``last.pt``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["attention_readout", "calibrate", "main"]


def attention_readout(att: torch.Tensor, labels: torch.Tensor, m: int) -> dict[str, float]:
    """Three numbers of an attention matrix ``att`` (B, B) (or (H, B, B), averaged over heads first), rows
    summing to 1: ``within``, the mean share of a row's attention on its own class; ``sink``, the share of
    all attention taken by the ``m`` most-read keys; ``self``, the mean attention of a row on itself.
    Uniform attention gives m/B (B/m classes of m), m/B and 1/B."""
    if att.dim() == 3:
        att = att.mean(0)
    if att.shape[0] != att.shape[1] or att.shape[0] != len(labels):
        raise ValueError(f"attention (B, B) and B labels needed, got {tuple(att.shape)} and {len(labels)}")
    same = (labels[:, None] == labels[None, :]).to(att.dtype)
    key_mass = att.mean(0)                                          # (B,) each key's share of all attention
    return {"within": float((att * same).sum(1).mean()),
            "sink": float(key_mass.sort(descending=True).values[:m].sum()),
            "self": float(att.diagonal().mean())}


def calibrate(layer_factory, trained_layer, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], m: int,
              untrained_seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> dict[str, dict[str, list[float]]]:
    """The readouts of ``trained_layer`` (a BatchFormer layer with ``attention_weights``) and of untrained
    layers ``layer_factory()`` built under each of ``untrained_seeds``, on every batch of features:
    ``{"trained": {"within": [...], ...}, "untrained": {...}}``, one value per batch (and seed)."""
    out: dict[str, dict[str, list[float]]] = {"trained": {}, "untrained": {}}
    with torch.no_grad():
        for feats, labels in batches:
            for key, value in attention_readout(trained_layer.attention_weights(feats), labels, m).items():
                out["trained"].setdefault(key, []).append(value)
            for seed in untrained_seeds:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    fresh = layer_factory().eval()
                for key, value in attention_readout(fresh.attention_weights(feats), labels, m).items():
                    out["untrained"].setdefault(key, []).append(value)
    return out


def _run_batches(run_dir: Path, n_batches: int):
    """The trained network of a run (:func:`bgtutorial.experiments.load_run_model`) and ``n_batches`` of its
    training batches' features, in eval mode."""
    from .data.sampler import MPerClassBatchSampler
    from .data.splits import build_splits
    from .experiments import load_run_model

    cfg, net = load_run_model(run_dir, dev=torch.device("cpu"))
    train_ds, _, _ = build_splits(cfg)
    batches = []
    sampler = MPerClassBatchSampler(train_ds.targets, cfg.m, cfg.batch_size, seed=cfg.seed)
    for idx in sampler.global_batches(0)[:n_batches]:
        with torch.no_grad():
            images = torch.stack([train_ds[int(i)][0] for i in idx])
            batches.append((net.features(images), torch.tensor([train_ds.targets[int(i)] for i in idx])))
    return cfg, net, batches


def main(argv: list[str] | None = None) -> int:
    from .batchformer import BatchFormerLayer
    from .utils import CLI_ERRORS, error_line

    p = argparse.ArgumentParser(prog="python -m bgtutorial.attention_stats", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/study")
    p.add_argument("--preset", default="glyphs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--batches", type=int, default=5)
    a = p.parse_args(argv)
    rows = []
    try:
        for seed in a.seeds:
            cfg, net, batches = _run_batches(Path(a.runs) / f"{a.preset}-batchformer-noise0-seed{seed}", a.batches)
            layer = net.batch_module.layers[0]
            res = calibrate(lambda: BatchFormerLayer(layer.dim, layer.num_heads), layer, batches, cfg.m)
            rows.append((seed, res, cfg.m / cfg.batch_size))
    except CLI_ERRORS as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    print("| seed | readout | uniform | trained: mean [min, max] over batches | untrained: mean [min, max] |")
    print("|---|---|---|---|---|")
    for seed, res, uniform in rows:
        for key in ("within", "sink"):
            t, u = res["trained"][key], res["untrained"][key]
            print(f"| {seed} | {key} | {uniform:.3f} | {statistics.mean(t):.3f} [{min(t):.3f}, {max(t):.3f}] | "
                  f"{statistics.mean(u):.3f} [{min(u):.3f}, {max(u):.3f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
