"""Training engine: ``python -m bgtutorial.train --preset glyphs [--field value ...] [--resume]``.

This module builds a run (network, loss, optimiser, schedule, batches) and trains it; the
config is :mod:`bgtutorial.config`, the data :mod:`bgtutorial.data.splits`, the scoring
:mod:`bgtutorial.evaluate`, the run folder :mod:`bgtutorial.checkpoint` and the command line
:mod:`bgtutorial.cli` (``python -m bgtutorial.train`` runs :func:`bgtutorial.cli.main`).

* Presets live in ``bgtutorial/configs/*.toml`` (with their sources); a preset name may end
  in ``-batchformer`` or ``-bgformer`` to add that batch module; any config field can be
  overridden on the command line (``--epochs 3 --lr 3e-4``).
* AdamW with parameter groups (backbone/head at ``lr``, proxies at ``proxy_lr_mult``·lr,
  batch module at ``module_lr`` or ``module_lr_mult``·lr), cosine or step schedule per step.
* The reference recipes' training details as options (docs/recipes.md): warm-up epochs that
  train only the head, the proxies and the batch module (``warm_epochs``); BatchNorm frozen
  (``bn_freeze``, ``bn_freeze_affine``); parameters kept frozen (``frozen``); gradient clipping
  by value or norm; random or m-per-class batches (``sampler``).
* Mixed precision that fits the device (``precision``, :mod:`bgtutorial.precision`); channels_last on CUDA.
* Evaluation every ``eval_every`` epochs and always after the last one (Recall@1/2/4/8, MAP@R,
  NMI); ``history.json`` after every epoch. Reported figures are the *last* epoch's: no
  checkpoint is chosen on the test classes. With ``val_classes`` > 0 that many training
  classes are held out, evaluated every epoch, and ``best_val.pt`` keeps the best of them.
* Checkpoints ``last.pt`` (every ``ckpt_every`` steps and every epoch), atomic, read with ``weights_only=True``;
  the run folder keeps its config in ``config.json`` (see :mod:`bgtutorial.checkpoint`).
* ``--resume`` continues from ``last.pt`` at the exact batch it stopped at: the sampler is a pure
  function of (seed, epoch), each sample's augmentation is seeded from its position, and the torch
  RNG states (the batch module's own too) travel in the checkpoint, so a killed run ends with the
  same weights as an uninterrupted one (CPU, fixed seed). Another config is refused (fields named).
* Training stops (``FloatingPointError``) as soon as the loss, the embeddings or the weights
  stop being finite; nothing non-finite is ever saved.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import atomic_json as _atomic_json
from .checkpoint import atomic_save as _atomic_save
from .checkpoint import check_optimizer_state, first_nonfinite, hold_run_dir, load_checkpoint, prepare_run_dir, restoring
from .config import Config
from .config_checks import check_paths
from .data.sampler import MPerClassBatchSampler, RandomBatchSampler, SeededBatches, SeededSamples
from .data.splits import build_splits
from .evaluate import evaluate
from .losses import ClassifierLoss, MetricLoss
from .models import RetrievalNet, weights_record
from .precision import Precision
from .utils import bars_disabled, describe_device, device, seed_everything

__all__ = ["train", "build_net", "build_model", "build_optimizer", "set_trainable", "set_train_mode"]


# ------------------------------------------------------------- network, loss, optimiser
def build_net(cfg: Config, with_module: bool = True, pretrained: bool | None = None,
              num_classes: int | None = None) -> RetrievalNet:
    """The config's network; ``with_module=False`` gives the test-time network (no batch module). A classification
    config's head is the classifier (``num_classes`` logits, raw in training), shared by both halves."""
    if cfg.classification and num_classes is None:
        raise ValueError(f"loss={cfg.loss!r} trains a classifier: build_net needs num_classes")
    return RetrievalNet(cfg.backbone, num_classes if cfg.classification else cfg.embed_dim,
                        cfg.pretrained if pretrained is None else pretrained,
                        cfg.batch_module if with_module else None, cfg.module_kwargs,
                        normalize=not (cfg.loss == "hyperbolic" or cfg.classification), pooling=cfg.pooling,
                        head_init=cfg.head_init, shared_head=cfg.shared_head, module_seed=cfg.seed)


def build_model(cfg: Config, num_classes: int, class_counts: list[int] | None = None) -> tuple[RetrievalNet, MetricLoss]:
    """The network and its loss (with proxies) for a config; a classification config's loss is a
    :class:`~bgtutorial.losses.ClassifierLoss` (``class_counts``: training images per class)."""
    if cfg.classification:
        return build_net(cfg, num_classes=num_classes), ClassifierLoss(
            cfg.loss, class_counts, None if cfg.plain_weight < 0 else cfg.plain_weight)
    loss = MetricLoss(cfg.loss, num_classes, cfg.embed_dim, cfg.margin, cfg.alpha,
                      None if cfg.plain_weight < 0 else cfg.plain_weight, m=cfg.m, tau=cfg.tau, c=cfg.curvature,
                      clip_r=cfg.clip_r, pair_reduction=cfg.pair_reduction, separate_module_loss=cfg.separate_module_loss)
    return build_net(cfg), loss


def build_optimizer(cfg: Config, model: RetrievalNet, criterion: MetricLoss) -> torch.optim.AdamW:
    """AdamW over three groups: network (``lr``), proxies (``proxy_lr_mult``·lr, ``proxy_weight_decay``),
    batch module (``module_lr`` when set, else ``module_lr_mult``·lr). Frozen parameters stay in
    their group (warm-up unfreezes them later); AdamW skips a parameter while its gradient is None."""
    module_params = list(model.batch_module.parameters()) if model.batch_module is not None else []
    module_ids = {id(p) for p in module_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in module_ids], "lr": cfg.lr},
              {"params": criterion.proxy_parameters(), "lr": cfg.lr * cfg.proxy_lr_mult,
               "weight_decay": cfg.proxy_weight_decay}]
    if module_params:
        groups.append({"params": module_params, "lr": cfg.module_lr or cfg.lr * cfg.module_lr_mult})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)


def _is_bn(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def set_trainable(model: RetrievalNet, cfg: Config, epoch: int) -> None:
    """Which parameters train in ``epoch``, a pure function of (config, epoch) so a resumed run agrees.

    * During the ``warm_epochs`` first epochs only the head and the batch module train (and the
      proxies, which live in the loss): the backbone is frozen, as Proxy-Anchor's ``--warm``
      (train.py L275-287).
    * ``bn_freeze_affine``: BatchNorm weights and biases never train. (Proxy-Anchor's code freezes
      them at construction but its warm-up end unfreezes every backbone parameter, so there they
      train after the warm-up: docs/recipes.md.)
    * Parameters whose name starts with one of the ``frozen`` prefixes never train.
    """
    prefixes = tuple(p.strip() for p in cfg.frozen.split(",") if p.strip())
    bn_params = {id(p) for m in model.modules() if _is_bn(m) for p in m.parameters(recurse=False)}
    for name, p in model.named_parameters():
        trainable = not (epoch < cfg.warm_epochs and name.startswith("backbone."))
        if cfg.bn_freeze_affine and id(p) in bn_params:
            trainable = False
        if prefixes and name.startswith(prefixes):
            trainable = False
        p.requires_grad_(trainable)


def _diverged(what: str, epoch: int, batch: int, cfg: Config) -> FloatingPointError:
    """The error that stops a run whose loss, embeddings or weights stopped being finite."""
    return FloatingPointError(f"{what} became NaN or inf at epoch {epoch + 1}, batch {batch}; training stopped "
                              f"and nothing from this step on was saved. Lower lr (now {cfg.lr}) or check the "
                              "data, then train again with --force (or into a new --out)")


def _lr_lambda(cfg: Config, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    if cfg.schedule == "step":
        return lambda s: cfg.lr_gamma ** ((s // steps_per_epoch) // cfg.lr_step)
    return lambda s: 1.0


# --------------------------------------------------------------------------------- training
def set_train_mode(model: torch.nn.Module, bn_freeze: bool) -> None:
    """``model.train()``, with BatchNorm layers left in eval mode when ``bn_freeze``."""
    model.train()
    if bn_freeze:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def train(cfg: Config, resume: bool = False, callback=None, force: bool = False) -> dict[str, Any]:
    """Train ``cfg``; return the history (also written to ``<run_dir>/history.json``).

    ``callback(history)`` is called after every evaluation (live plots in notebooks).
    A run folder that holds another config (``config.json``) raises ``ConfigMismatchError``,
    with ``resume`` or without; ``force=True`` deletes its run files and starts over.
    One run per folder: the run holds a lock on its folder (:func:`~bgtutorial.checkpoint.hold_run_dir`),
    and a second run into it stops at once (``LockedError`` naming the holder), ``force`` or not.
    Nothing is written into the folder before the config, the data and the model are known good.
    Under torchrun (``WORLD_SIZE`` > 1) it trains with DistributedDataParallel: ``batch_size``
    is the global batch, each rank takes its slice; rank 0 evaluates, writes the files and holds
    the lock. BatchNorm is synchronised across GPUs (SyncBatchNorm) unless ``bn_freeze``; on CPU
    ranks (gloo) it stays per rank.
    """
    from .distributed import setup

    cfg.validate()
    check_paths(cfg)
    rank, _, _ = setup()
    with hold_run_dir(cfg.run_dir) if rank == 0 else contextlib.nullcontext():
        return _train(cfg, resume, callback, force)


def _train(cfg: Config, resume: bool, callback, force: bool) -> dict[str, Any]:
    """:func:`train`'s body, run while the folder is locked: set up, resume, then epoch after epoch.

    Per epoch: :func:`_train_epoch` (per batch :func:`_train_step`: forward and the loss of both
    halves, backward, clipping, optimiser step), then the evaluation and :func:`_record_epoch`
    (history, checkpoints). The RNG is drawn in this order, so a seed gives the same run.
    """
    run = _set_up(cfg, force)
    start_epoch, start_batch = 0, 0
    if resume and (run.folder / "last.pt").is_file():
        start_epoch, start_batch = _resume(run)
    if run.history["initial"] is None:
        _evaluate_initial(run)
    epochs_bar = tqdm(range(start_epoch, cfg.epochs), desc=f"{cfg.preset}", disable=bars_disabled(cfg.progress),
                      initial=start_epoch, total=cfg.epochs)
    for epoch in epochs_bar:
        seconds, n_images = _train_epoch(run, epoch, start_batch if epoch == start_epoch else 0)
        evaluate_test = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        metrics = _eval_now(run, run.test_ds) if evaluate_test else {}
        val_metrics = _eval_now(run, run.val_ds) if run.val_ds is not None else None
        if not run.lead:
            continue
        _record_epoch(run, epoch, metrics, val_metrics, seconds, n_images)
        if metrics:
            epochs_bar.set_postfix({k: f"{metrics[k]:.3f}" for k in ("R@1", "top1") if k in metrics})
        if callback is not None:
            callback(run.history)
    return run.history


# ------------------------------------------------------------------------------- set up
@dataclass
class _Run:
    """What a run holds while it trains (:func:`_set_up` builds it; every step below reads it)."""
    cfg: Config
    dev: torch.device
    rank: int
    world_size: int
    folder: Path                       # the run folder, cfg.run_dir
    train_ds: Dataset
    val_ds: Dataset | None
    test_ds: Dataset
    model: RetrievalNet
    criterion: MetricLoss
    net: torch.nn.Module               # the model, or its DistributedDataParallel wrapper under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    prec: Precision
    sampler: MPerClassBatchSampler
    steps_per_epoch: int
    history: dict[str, Any]
    clip_params: list[torch.nn.Parameter]   # what gradient clipping sees: the network and the proxies

    @property
    def lead(self) -> bool:
        """Rank 0: it evaluates, writes the files and holds the folder's lock."""
        return self.rank == 0


def _set_up(cfg: Config, force: bool) -> _Run:
    """Seed, data, network and loss, the run folder, then the optimiser, precision, batches and schedule."""
    from .distributed import setup

    rank, world_size, local_rank = setup()
    seed_everything(cfg.seed)
    dev = torch.device("cuda", local_rank) if world_size > 1 and torch.cuda.is_available() else device(cfg.device or None)
    run = cfg.run_dir
    prepare_run_dir(run, cfg, force=force, write=False)    # refuses another config before any work
    train_ds, val_ds, test_ds = build_splits(cfg)
    num_classes = len(set(train_ds.targets))
    counts = [train_ds.targets.count(c) for c in range(num_classes)] if cfg.classification else None
    model, criterion = build_model(cfg, num_classes, counts)
    _check_frozen(cfg, model)
    sampler = _batch_sampler(cfg, train_ds, rank, world_size)
    prec = Precision(cfg.precision, dev)
    prepare_run_dir(run, cfg, force=force, write=rank == 0)     # data, model, batches known good: write config.json
    if world_size > 1:
        torch.distributed.barrier()
    model, net = _place(cfg, model, criterion, dev, world_size, local_rank)
    optimizer = build_optimizer(cfg, model, criterion)
    steps_per_epoch = sampler.num_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    history: dict[str, Any] = {"config": dataclasses.asdict(cfg), "device": str(dev),
                               "device_name": describe_device(dev), "precision": prec.name, "backbone_weights": weights_record(cfg.backbone, cfg.pretrained),
                               "initial": None, "epochs": [], "steps": []}
    history.update({} if counts is None else {"class_counts": counts})   # recognition: training images per class
    clip_params = [p for p in model.parameters()] + criterion.proxy_parameters()
    return _Run(cfg, dev, rank, world_size, run, train_ds, val_ds, test_ds, model, criterion, net, optimizer,
                scheduler, prec, sampler, steps_per_epoch, history, clip_params)


def _check_frozen(cfg: Config, model: RetrievalNet) -> None:
    """Refuse a ``frozen`` prefix that names no parameter of the network (a typo would freeze nothing)."""
    prefixes = [p.strip() for p in cfg.frozen.split(",") if p.strip()]
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            raise ValueError(f"frozen={prefix!r} matches no parameter of {cfg.backbone}; parameter names start "
                             f"with e.g. {', '.join(sorted({n.rsplit('.', 2)[0] for n in names})[:6])}")


def _place(cfg: Config, model: RetrievalNet, criterion: MetricLoss, dev: torch.device, world_size: int,
           local_rank: int) -> tuple[RetrievalNet, torch.nn.Module]:
    """The model and loss on ``dev``; under torchrun SyncBatchNorm, the gathered batch and DDP.
    Returns (model, the network the steps call: the model or its DDP wrapper)."""
    from torch.nn.parallel import DistributedDataParallel

    from .distributed import GatherBatch

    model.to(dev)
    criterion.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if world_size > 1 and dev.type == "cuda" and not cfg.bn_freeze:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if world_size > 1 and cfg.global_batch:
        model.gather = GatherBatch()
    # BGFormer with lam=1 leaves its label path unused, and warm-up freezes the backbone for a
    # while: DDP must be told to expect parameters without gradients in those cases
    set_trainable(model, cfg, epoch=cfg.epochs)          # the final state: DDP registers these parameters
    find_unused = cfg.batch_module == "bgformer" or cfg.warm_epochs > 0
    net = DistributedDataParallel(model, device_ids=[local_rank] if dev.type == "cuda" else None,
                                  find_unused_parameters=find_unused) if world_size > 1 else model
    return model, net


def _batch_sampler(cfg: Config, train_ds: Dataset, rank: int, world_size: int) -> MPerClassBatchSampler:
    """m-per-class batches (or random ones, ``sampler="random"``), each rank taking its slice."""
    if cfg.sampler == "random":
        return RandomBatchSampler(len(train_ds), cfg.batch_size, cfg.steps_per_epoch or None, cfg.seed,
                                  rank=rank, world_size=world_size)
    return MPerClassBatchSampler(train_ds.targets, cfg.m, cfg.batch_size, cfg.steps_per_epoch or None,
                                 cfg.seed, rank=rank, world_size=world_size)


# ----------------------------------------------------------------- checkpoints, evaluation
def _resume(run: _Run) -> tuple[int, int]:
    """Restore ``last.pt`` (weights, optimiser, schedule, scaler, RNG, history); return (epoch, batch) to go on from."""
    last = run.folder / "last.pt"
    ck = load_checkpoint(last, run.dev, config=run.cfg)
    with restoring(last):         # a missing entry or a tensor of another shape: one CheckpointError
        run.model.load_state_dict(ck["model"])
        run.criterion.load_state_dict(ck["loss"])
        run.optimizer.load_state_dict(ck["optimizer"])
        check_optimizer_state(run.optimizer)
        run.scheduler.load_state_dict(ck["scheduler"])
        run.prec.load_state_dict(ck.get("scaler", {}))
        torch.set_rng_state(ck["rng_cpu"])
        if run.dev.type == "cuda" and "rng_cuda" in ck:
            torch.cuda.set_rng_state(ck["rng_cuda"])
        if run.model.module_stream is not None and "rng_module" in ck:
            run.model.module_stream.load_state_dict(ck["rng_module"])
        history = json.loads(ck["history"])
        start_epoch, start_batch = ck["epoch"], ck["batch"]
        if not (isinstance(history, dict) and 0 <= start_epoch <= run.cfg.epochs
                and 0 <= start_batch < run.steps_per_epoch):
            raise ValueError(f"epoch {start_epoch}, batch {start_batch} is not a point of this run's schedule")
    run.history = history
    if run.lead:
        print(f"resumed from {last}: epoch {start_epoch}, batch {start_batch}", file=sys.stderr)
        if not (run.folder / "history.json").is_file():   # deleted (it was broken): restored from last.pt
            _atomic_json(history, run.folder / "history.json")
    return start_epoch, start_batch


def _save_last(run: _Run, epoch: int, batch: int) -> None:
    """``last.pt``: everything a resume needs to go on at (``epoch``, ``batch``); rank 0 only."""
    if not run.lead:
        return
    state = {"model": run.model.state_dict(), "loss": run.criterion.state_dict(),
             "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "scaler": run.prec.state_dict(), "rng_cpu": torch.get_rng_state(),
             "epoch": epoch, "batch": batch, "history": json.dumps(run.history),
             "config": json.dumps(dataclasses.asdict(run.cfg))}
    if run.dev.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state()
    if run.model.module_stream is not None:
        state["rng_module"] = run.model.module_stream.state_dict()
    _atomic_save(state, run.folder / "last.pt")


def _eval_now(run: _Run, dataset: Dataset) -> dict[str, float]:
    """Rank 0 evaluates; the other ranks wait for it (and get an empty dict)."""
    cfg = run.cfg
    metrics = evaluate(run.model, dataset, cfg.eval_batch_size, cfg.eval_nmi, run.dev, cfg,
                       run.history.get("class_counts")) if run.lead else {}
    if run.world_size > 1:
        torch.distributed.barrier()
    return metrics


def _evaluate_initial(run: _Run) -> None:
    """The scores before any training (epoch 0 of the curves), written to ``history.json``."""
    run.history["initial"] = _eval_now(run, run.test_ds)
    if run.val_ds is not None:
        run.history["initial_val"] = _eval_now(run, run.val_ds)
    if run.lead:
        _atomic_json(run.history, run.folder / "history.json")


def _record_epoch(run: _Run, epoch: int, metrics: dict[str, float], val_metrics: dict[str, float] | None,
                  seconds: float, n_images: int) -> None:
    """Rank 0, after an epoch: its record in the history, ``best_val.pt`` when the validation classes
    improved, then ``last.pt`` and ``history.json``."""
    history = run.history
    epoch_losses = [s["loss"] for s in history["steps"] if s["epoch"] == epoch]
    record = {"epoch": epoch + 1, "loss": sum(epoch_losses) / max(1, len(epoch_losses)), **metrics,
              "train_seconds": seconds, "images_per_s": n_images / max(seconds, 1e-9)}
    plain_losses = [s["loss_plain"] for s in history["steps"] if s["epoch"] == epoch and "loss_plain" in s]
    if plain_losses:                  # the plain half alone: the features used at test time
        record["loss_plain"] = sum(plain_losses) / len(plain_losses)
    if val_metrics is not None:
        record["val"] = val_metrics
        previous_best = max((e["val"]["R@1"] for e in history["epochs"]), default=-1.0)
        if val_metrics["R@1"] > previous_best:    # model selection on held-out *training* classes only
            _atomic_save({"model": run.model.state_dict(), "epoch": epoch + 1, "val": val_metrics,
                          "config": json.dumps(dataclasses.asdict(run.cfg))}, run.folder / "best_val.pt")
    history["epochs"].append(record)
    _save_last(run, epoch + 1, 0)
    _atomic_json(history, run.folder / "history.json")


# --------------------------------------------------------------------------- the steps
def _train_epoch(run: _Run, epoch: int, start_batch: int) -> tuple[float, int]:
    """One epoch of steps from batch ``start_batch`` on (``last.pt`` every ``ckpt_every`` steps);
    returns (seconds, images seen)."""
    cfg, sampler = run.cfg, run.sampler
    set_train_mode(run.model, cfg.bn_freeze)
    set_trainable(run.model, cfg, epoch)
    sampler.set_epoch(epoch, start_batch)
    # the loader's own generator: creating its iterator must not draw from the global RNG,
    # whose state the checkpoint carries (a resumed run would otherwise drift)
    loader = DataLoader(SeededSamples(run.train_ds), batch_sampler=SeededBatches(sampler, cfg.seed),
                        generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch),
                        num_workers=cfg.num_workers, pin_memory=run.dev.type == "cuda", persistent_workers=False)
    t0, n_images = time.perf_counter(), 0
    steps = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=bars_disabled(cfg.progress),
                 initial=sampler.start_batch, total=run.steps_per_epoch)
    for batch_idx, (x, y) in enumerate(steps, start=sampler.start_batch):
        loss = _train_step(run, x, y, epoch, batch_idx)
        n_images += x.shape[0]
        loss_value = _record_step(run, loss, epoch, batch_idx)
        steps.set_postfix(loss=f"{loss_value:.3f}")
        if cfg.ckpt_every and (batch_idx + 1) % cfg.ckpt_every == 0 and batch_idx + 1 < run.steps_per_epoch:
            _save_last(run, epoch, batch_idx + 1)
    return time.perf_counter() - t0, n_images


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor, epoch: int, batch_idx: int) -> torch.Tensor:
    """One optimiser step on a batch x (B, C, H, W), y (B,); returns the loss."""
    loss = _forward(run, x, y, epoch, batch_idx)
    _backward(run, loss)
    if run.cfg.clip_grad_value or run.cfg.clip_grad_norm:
        _clip_gradients(run)
    _optimizer_step(run, epoch, batch_idx)
    return loss


def _forward(run: _Run, x: torch.Tensor, y: torch.Tensor, epoch: int, batch_idx: int) -> torch.Tensor:
    """The network on the batch and the loss of both halves (plain and through the batch module:
    :class:`~bgtutorial.losses.MetricLoss`); a loss or embedding that is not finite stops the run."""
    dev = run.dev
    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with run.prec.autocast():
        emb, y2 = run.net(x, y)
    loss = run.criterion(emb, y2, batch_size=x.shape[0] * (run.world_size if run.model.gather else 1))
    if not (torch.isfinite(loss) & torch.isfinite(emb).all()):
        raise _diverged("the loss" if torch.isfinite(emb).all() else "the embeddings", epoch, batch_idx, run.cfg)
    return loss


def _backward(run: _Run, loss: torch.Tensor) -> None:
    """Gradients of the loss (scaled under fp16); under torchrun the proxies' are averaged over ranks."""
    run.optimizer.zero_grad(set_to_none=True)
    run.prec.backward(loss)
    if run.world_size > 1:            # the proxies live outside DDP: average their gradients by hand
        for p in run.criterion.proxy_parameters():
            torch.distributed.all_reduce(p.grad)
            p.grad /= run.world_size


def _clip_gradients(run: _Run) -> None:
    """Clip the gradients of the network and the proxies by value and/or by norm."""
    cfg = run.cfg
    run.prec.unscale(run.optimizer)   # clip the true gradients, not the fp16-scaled ones
    grads = [p for p in run.clip_params if p.grad is not None]
    if cfg.clip_grad_value:
        torch.nn.utils.clip_grad_value_(grads, cfg.clip_grad_value)
    if cfg.clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(grads, cfg.clip_grad_norm)


def _optimizer_step(run: _Run, epoch: int, batch_idx: int) -> None:
    """The optimiser's step (weights that stop being finite stop the run), then the schedule's."""
    stepped = run.prec.step(run.optimizer)
    bad = first_nonfinite([*run.model.named_parameters(), *run.criterion.named_parameters()])
    if bad is not None:
        raise _diverged(f"the weights ({bad})", epoch, batch_idx, run.cfg)
    if stepped:
        run.scheduler.step()
    else:                         # fp16 overflow: the scaler skipped this step; the schedule still advances
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            run.scheduler.step()


def _record_step(run: _Run, loss: torch.Tensor, epoch: int, batch_idx: int) -> float:
    """The step's loss in the history (and each half's, when a batch module is on); returns the loss."""
    loss_value = loss.item()
    record = {"epoch": epoch, "batch": batch_idx, "loss": loss_value}
    if run.criterion.last_parts is not None:      # a batch module is on: each half's loss apart
        record["loss_plain"], record["loss_module"] = (v.item() for v in run.criterion.last_parts)
    run.history["steps"].append(record)
    return loss_value


if __name__ == "__main__":          # python -m bgtutorial.train: the command line lives in cli.py
    from .cli import main

    sys.exit(main())
