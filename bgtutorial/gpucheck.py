"""``make gpu-check``: what a lent GPU can do with both CUB tiers, before a long run is spent on it.

``python -m bgtutorial.gpucheck [--steps 100] [--tiers cub-resnet50 cub-vits] [--out gpu-check.json]``

On a synthetic CUB-200-2011 archive in the official layout (200 classes, JPEGs of 300-500 px,
built once under ``data/``), for each tier and each method (baseline, BatchFormer, BGFormer) it
trains ``--steps`` steps through the real training code with the preset's recipe (random
weights: nothing is downloaded) and prints:

* images/s of the training loop (data loading included) and the peak GPU memory of the run;
* the batch module's share of a training step: its own forward + backward on pooled features of
  the preset's batch, timed with CUDA events, over the plain step's time;
* the largest batch (a multiple of the preset's m) whose training step fits in GPU memory.

Without a CUDA GPU it says so and exits with status 1 (``--allow-cpu`` runs the same code on
the CPU at toy sizes, which is how the tests exercise it).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .models import BATCH_MODULES
from .precision import Precision
from .config import load_config
from .train import build_model, train

__all__ = ["check_tier", "largest_batch", "module_share", "estimate_train_gib", "batch_that_fits", "main"]

TIERS = ("cub-resnet50", "cub-vits")


def _fake_batch(cfg, batch_size: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (B, 3, S, S) and m-per-class labels (B,) for memory and timing probes."""
    x = torch.randn(batch_size, 3, cfg.image_size, cfg.image_size, device=dev)
    y = torch.arange(batch_size // cfg.m, device=dev).repeat_interleave(cfg.m)
    return x, y


def _one_step(cfg, model, criterion, optimizer, prec: Precision, x: torch.Tensor, y: torch.Tensor) -> None:
    with prec.autocast():
        emb, y2 = model(x, y)
    loss = criterion(emb, y2, batch_size=x.shape[0])
    optimizer.zero_grad(set_to_none=True)
    prec.backward(loss)
    prec.step(optimizer)


def largest_batch(cfg, dev: torch.device, limit: int = 4096) -> int | None:
    """The largest multiple of ``cfg.m`` (up to ``limit``) whose training step fits in GPU memory:
    doubling until a step runs out of memory, then bisection. ``None`` on the CPU (no such limit)."""
    if dev.type != "cuda":
        return None
    from .train import build_optimizer

    model, criterion = build_model(cfg, num_classes=max(2, limit // cfg.m))
    model.to(dev).train()
    criterion.to(dev)
    optimizer = build_optimizer(cfg, model, criterion)
    prec = Precision(cfg.precision, dev)

    def fits(b: int) -> bool:
        try:
            _one_step(cfg, model, criterion, optimizer, prec, *_fake_batch(cfg, b, dev))
            torch.cuda.synchronize(dev)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    good, bad = 0, None
    b = cfg.m * 2
    while b <= limit:
        if fits(b):
            good, b = b, b * 2
        else:
            bad = b
            break
    if bad is None:
        return good
    while bad - good > cfg.m:                     # bisect in units of m
        mid = (good + bad) // 2 // cfg.m * cfg.m
        if mid in (good, bad):
            break
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    del model, criterion, optimizer
    torch.cuda.empty_cache()
    return good


def module_share(cfg, dev: torch.device, repeats: int = 10) -> dict[str, float]:
    """Milliseconds of one training step of the preset's network, of the batch module's own forward +
    backward on pooled features (B, D), and their ratio (medians over ``repeats``)."""
    from .train import build_optimizer

    model, criterion = build_model(cfg, num_classes=max(2, cfg.batch_size // cfg.m))
    model.to(dev).train()
    criterion.to(dev)
    optimizer = build_optimizer(cfg, model, criterion)
    prec = Precision(cfg.precision, dev)
    x, y = _fake_batch(cfg, cfg.batch_size, dev)

    def timed(fn) -> float:
        times = []
        for i in range(repeats + 2):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= 2:                                # two warm-up calls
                times.append((time.perf_counter() - t0) * 1000)
        return sorted(times)[len(times) // 2]

    step_ms = timed(lambda: _one_step(cfg, model, criterion, optimizer, prec, x, y))
    out = {"step_ms": step_ms, "module_ms": 0.0, "share": 0.0}
    if model.batch_module is not None:
        feats = torch.randn(cfg.batch_size, model.feat_dim, device=dev, requires_grad=True)

        def module_only() -> None:
            with prec.autocast():
                f, _ = model.batch_module.augment(feats, y)
            f.float().sum().backward()

        out["module_ms"] = timed(module_only)
        out["share"] = out["module_ms"] / step_ms
    return out


def check_tier(tier: str, method: str, data_root: Path, steps: int, dev: torch.device, tiny: bool = False,
               out_root: Path | None = None) -> dict[str, Any]:
    """Train ``steps`` steps of ``tier`` with ``method`` on the synthetic archive; measure it."""
    preset = tier if method == "none" else f"{tier}-{method}"
    toy = dict(image_size=64 if tier != "cub-vits" else 224, batch_size=8 if tier != "cub-vits" else 6,
               m=4 if tier != "cub-vits" else 3, fake_classes=8, fake_per_class=4) if tiny else {}
    out_root = out_root or Path(tempfile.mkdtemp(prefix="gpucheck-"))
    cfg = load_config(preset, dataset="fake-cub", data_root=str(data_root), pretrained=False, epochs=1,
                      warm_epochs=0, steps_per_epoch=steps, eval_every=1, eval_nmi=False, progress=False,
                      out=str(out_root / preset), device=str(dev),
                      **({} if tiny else {"fake_classes": 200, "fake_per_class": 20}), **toy)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    h = train(cfg)
    row = {"preset": preset, "batch_size": cfg.batch_size, "steps": len(h["steps"]), "precision": h["precision"],
           "images_per_s": h["epochs"][-1]["images_per_s"], "loss_first": h["steps"][0]["loss"],
           "loss_last": h["steps"][-1]["loss"],
           "plain_loss_first": h["steps"][0].get("loss_plain"), "plain_loss_last": h["steps"][-1].get("loss_plain"),
           "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}
    row.update(module_share(cfg, dev, repeats=3 if tiny else 10))
    row["largest_batch"] = largest_batch(cfg, dev) if method == "none" else None
    return row


def estimate_train_gib(cfg, batch_size: int | None = None, margin: float = 1.25, context_gib: float = 0.5,
                       precision: str | None = None) -> dict[str, float]:
    """An *estimate*, made on the CPU, of the GPU memory one training step of ``cfg`` takes; not a
    measurement (``make gpu-check`` measures the real peak on a GPU, docs/gpu-runs.md).

    Two forward passes of the preset's network and loss (random weights, nothing downloaded), at one
    and two classes of ``m`` images, count the bytes autograd keeps for the backward pass (tensors that
    are parameters are left out); the difference gives the bytes per image, the rest the fixed part.
    ``precision``: "fp32", or 16-bit ("bf16"/"fp16", the default on a GPU under ``precision="auto"``,
    probed with bf16 autocast: both store 2 bytes). Returned (GiB unless named):

    * ``per_image_mib``: activations kept per image;
    * ``params_gib``: weights, gradients and AdamW's two moments, 16 bytes per parameter;
    * ``total_gib``: ``margin`` x (params + fixed activations + batch_size x per image) + ``context_gib``
      (CUDA's own context); the margin stands for temporaries of the backward pass and fragmentation;
    * ``batch_size``, ``precision``, ``margin``, ``context_gib``: what the estimate assumed.

    :func:`batch_that_fits` turns it into the largest batch a card of a given size holds.
    """
    precision = precision or ("fp32" if cfg.precision == "fp32" else "bf16")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    from .losses import MetricLoss
    from .train import build_net

    net = build_net(cfg, pretrained=False).train()
    criterion = MetricLoss(cfg.loss, 2, cfg.embed_dim, cfg.margin, cfg.alpha,
                           None if cfg.plain_weight < 0 else cfg.plain_weight, m=cfg.m, tau=cfg.tau,
                           c=cfg.curvature, clip_r=cfg.clip_r, pair_reduction=cfg.pair_reduction)
    n_params = sum(p.numel() for p in [*net.parameters(), *criterion.parameters()])
    own = {p.untyped_storage().data_ptr() for p in [*net.parameters(), *criterion.parameters()]}

    def kept_bytes(classes: int) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in own:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        b = classes * cfg.m
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(b, 3, cfg.image_size, cfg.image_size, generator=gen)       # (B, 3, S, S)
        y = torch.arange(classes).repeat_interleave(cfg.m)                         # (B,)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32"):
                emb, y2 = net(x, y)
            criterion(emb, y2, batch_size=b)
        return sum(seen.values())

    one, two = kept_bytes(1), kept_bytes(2)
    per_image = (two - one) / cfg.m
    fixed = max(0.0, one - per_image * cfg.m)
    b = batch_size or cfg.batch_size
    params_gib = 16 * n_params / 2**30
    total = margin * (params_gib + (fixed + b * per_image) / 2**30) + context_gib
    return {"per_image_mib": per_image / 2**20, "fixed_gib": fixed / 2**30, "params_gib": params_gib,
            "batch_size": b, "precision": precision, "margin": margin, "context_gib": context_gib,
            "total_gib": total}


def batch_that_fits(estimate: dict[str, float], total_gib: float, m: int) -> int:
    """The largest multiple of ``m`` whose step fits in ``total_gib`` by an :func:`estimate_train_gib`
    estimate (0 when not even the fixed part fits): the same formula solved for the batch size."""
    free = (total_gib - estimate["context_gib"]) / estimate["margin"] - estimate["params_gib"] - estimate["fixed_gib"]
    images = int(free * 2**30 / (estimate["per_image_mib"] * 2**20)) if free > 0 else 0
    return images // m * m


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bgtutorial.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--steps", type=int, default=100, help="training steps per tier and method")
    p.add_argument("--tiers", nargs="+", default=list(TIERS), choices=TIERS)
    p.add_argument("--methods", nargs="+", default=list(BATCH_MODULES), choices=list(BATCH_MODULES))
    p.add_argument("--data_root", default="data")
    p.add_argument("--out", default="", help="also write the rows as JSON to this file")
    p.add_argument("--allow-cpu", action="store_true", help="run at toy sizes on the CPU (tests)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu-check needs a CUDA GPU and torch.cuda.is_available() is False here; run it where a GPU is "
              "lent (the results go into docs/gpu-runs.md).", file=sys.stderr)
        return 1
    if args.steps < 1:
        print(f"error: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"gpu-check on {name}, torch {torch.__version__}, {args.steps} steps per run")
    rows = []
    for tier in args.tiers:
        for method in args.methods:
            rows.append(check_tier(tier, method, Path(args.data_root), args.steps, dev, tiny=not torch.cuda.is_available()))
            r = rows[-1]
            print(f"{r['preset']:<26} batch {r['batch_size']:>4} {r['precision']:>5}  {_fmt(r['images_per_s']):>7} img/s  "
                  f"peak {_fmt(r['peak_gib'])} GiB  step {_fmt(r['step_ms'])} ms  module {_fmt(r['module_ms'])} ms "
                  f"({100 * r['share']:.2f}%)  largest batch {_fmt(r['largest_batch'])}  "
                  f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}"
                  + (f" (plain half {r['plain_loss_first']:.3f} -> {r['plain_loss_last']:.3f})"
                     if r["plain_loss_first"] is not None else ""), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
