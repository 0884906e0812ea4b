"""Training engine and CLI: ``python -m bgtutorial.train --preset digits [--field value ...] [--resume]``.

* Presets live in ``bgtutorial/configs/*.toml`` (with their sources); a preset name may end
  in ``-batchformer`` or ``-bgformer`` to add that batch module; any config field can be
  overridden on the command line (``--epochs 3 --lr 3e-4``).
* AdamW with parameter groups (backbone/head at ``lr``, proxies at ``proxy_lr_mult``·lr,
  batch module at ``module_lr_mult``·lr), cosine or step schedule per step.
* bf16 autocast and channels_last on CUDA only.
* Evaluation every epoch (Recall@1/2/4/8, MAP@R, NMI); ``history.json`` after every epoch.
* Checkpoints ``last.pt`` (every ``ckpt_every`` steps and every epoch) and ``best.pt``,
  written atomically (temporary file, then rename) and read with ``weights_only=True``;
  the run folder keeps its config in ``config.json`` (see :mod:`bgtutorial.checkpoint`).
* ``--resume`` continues from ``last.pt`` at the exact batch it stopped at: the sampler is a
  pure function of (seed, epoch), each sample's augmentation is seeded from its position,
  and the torch RNG state travels in the checkpoint, so a killed run ends with the same
  weights as an uninterrupted one (CPU, fixed seed). Resuming (or training again) with a
  different config is refused with the differing fields named; ``--force`` starts over.
* Training stops (``FloatingPointError``) as soon as the loss, the embeddings or the weights
  stop being finite; nothing non-finite is ever saved.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import atomic_json as _atomic_json
from .checkpoint import atomic_save as _atomic_save
from .checkpoint import first_nonfinite, load_checkpoint, prepare_run_dir
from .data import (CUB200, DigitsRetrieval, MPerClassBatchSampler, download_cub, eval_transform, fake_cub_url,
                   make_fake_cub, train_transform)
from .losses import LOSSES, MetricLoss
from .metrics import retrieval_metrics
from .models import BACKBONES, RetrievalNet
from .utils import CLI_ERRORS, autocast_dtype, bars_disabled, device, seed_everything

__all__ = ["Config", "load_config", "train", "evaluate", "embed_dataset", "build_datasets", "build_model",
           "load_checkpoint", "PRESETS"]

PRESETS = ("digits", "smoke", "cub-resnet50", "cub-vits")
MODULES = ("none", "batchformer", "bgformer")


@dataclass
class Config:
    """Every knob of a run. Presets set some fields; the CLI can override any of them."""
    preset: str = "digits"
    dataset: str = "digits"            # digits | fake-cub | cub
    data_root: str = "data"
    out: str = ""                      # run folder (default runs/<preset>-seed<seed>)
    seed: int = 0
    # model
    backbone: str = "smallcnn"
    pretrained: bool = False
    embed_dim: int = 128
    batch_module: str = "none"         # none | batchformer | bgformer
    module_kwargs: dict = field(default_factory=dict)
    module_lr_mult: float = 1.0
    # loss
    loss: str = "proxy_anchor"
    margin: float = 0.1
    alpha: float = 32.0
    proxy_lr_mult: float = 100.0
    tau: float = 0.2                   # hyperbolic loss: temperature
    curvature: float = 0.1             # hyperbolic loss: c of the Poincaré ball
    clip_r: float = 2.3                # hyperbolic loss: feature clipping radius
    plain_weight: float = -1.0         # <0: one loss over the doubled batch; else α·L(plain)+(1-α)·L(module)
    # optimisation
    epochs: int = 8
    batch_size: int = 60
    m: int = 12
    steps_per_epoch: int = 0           # 0: len(train) // batch_size
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"           # cosine | step | constant
    lr_step: int = 10                  # epochs, for schedule="step"
    lr_gamma: float = 0.5
    # data
    image_size: int = 32
    views: int = 4                     # digits only
    fake_classes: int = 20             # fake-cub only
    fake_per_class: int = 8
    label_noise: float = 0.0           # share of training labels flipped (robustness study)
    num_workers: int = 0
    cache_size: int = 0                # CUB only: >0 decodes and resizes images once into a memory-mapped cache
    eval_batch_size: int = 256
    # runtime
    device: str = ""                   # "" = CUDA when present, else CPU
    amp: bool = True                   # bf16 autocast, CUDA only
    ckpt_every: int = 0                # also save last.pt every N steps (0: once per epoch)
    bn_freeze: bool = False            # BatchNorm layers kept in eval mode while training (Kim et al.'s code)
    global_batch: bool = False         # under torchrun: the batch module and the loss see the global batch
    eval_nmi: bool = True
    progress: bool = True

    def validate(self) -> "Config":
        """Raise ``ValueError`` with the fix for a config that cannot run."""
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.batch_module not in MODULES:
            raise ValueError(f"unknown batch_module {self.batch_module!r}; choose one of {', '.join(MODULES)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.dataset not in ("digits", "fake-cub", "cub"):
            raise ValueError(f"unknown dataset {self.dataset!r}; choose digits, fake-cub or cub")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose cosine, step or constant")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name}={value} is not a finite number; pass a finite one, "
                                 f"e.g. --{f.name} {f.default}")
        for name, low in _MINIMUM.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)} is out of range: it must be >= {low}; "
                                 f"pass e.g. --{name} {max(low, Config.__dataclass_fields__[name].default)}")
        if self.lr <= 0 or self.lr_gamma <= 0:
            raise ValueError(f"lr and lr_gamma must be > 0, got lr={self.lr}, lr_gamma={self.lr_gamma}; "
                             "try --lr 1e-3 (digits) or 1e-4 (CUB)")
        if self.m < 1 or self.batch_size % self.m != 0:
            raise ValueError(f"batch_size={self.batch_size} must be a positive multiple of m={self.m} "
                             f"(samples per class); try batch_size={max(self.m, self.batch_size // max(self.m, 1) * self.m)}")
        if self.device:
            device(self.device)        # a device that is not there: ValueError with the choices
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"label_noise must be in [0, 1), got {self.label_noise}")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.preset}-seed{self.seed}")


#: smallest allowed value of the numeric fields (``lr`` and ``lr_gamma`` must be > 0)
_MINIMUM = {"batch_size": 1, "m": 1, "epochs": 1, "lr_step": 1, "eval_batch_size": 1, "embed_dim": 1,
            "image_size": 1, "views": 1, "fake_classes": 2, "fake_per_class": 1, "steps_per_epoch": 0,
            "weight_decay": 0, "proxy_lr_mult": 0, "module_lr_mult": 0, "ckpt_every": 0, "num_workers": 0,
            "cache_size": 0}


def _preset_file(name: str) -> dict[str, Any]:
    path = resources.files("bgtutorial") / "configs" / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} "
                         "(optionally followed by -batchformer or -bgformer)")
    return tomllib.loads(path.read_text())


def load_config(preset: str = "digits", **overrides: Any) -> Config:
    """A validated :class:`Config` from a preset (``"digits-batchformer"`` adds the module) and overrides."""
    base, module = preset, None
    for mod in ("batchformer", "bgformer"):
        if preset.endswith("-" + mod):
            base, module = preset[: -len(mod) - 1], mod
    values: dict[str, Any] = {"preset": preset, **_preset_file(base)}
    if module:
        values["batch_module"] = module
    names = {f.name for f in dataclasses.fields(Config)}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"unknown config field {key!r}; known fields: {', '.join(sorted(names))}")
        values[key] = value
    return Config(**values).validate()


# ------------------------------------------------------------------------------------- data
class SeededSamples(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` runs its random transform under ``seed``.

    The augmentation of a sample then depends only on where it stands in the epoch, not on
    worker processes or on where a resumed run started; the caller's RNG is left untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class SeededBatches:
    """Turns a batch sampler's index lists into ``(index, seed)`` lists for :class:`SeededSamples`.

    A sample's seed depends on its position in the *global* batch, so one process and N ranks
    (each holding a slice) augment every sample identically.
    """

    def __init__(self, sampler: MPerClassBatchSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed
        self.offset = sampler.rank * (sampler.batch_size // sampler.world_size)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        s = self.sampler
        for b, batch in enumerate(iter(s), start=s.start_batch):
            base = ((self.seed * 1_000_003 + s.epoch) * 1_000_003 + b) * 10_007
            yield [(i, (base + self.offset + j) % 2**62) for j, i in enumerate(batch)]


class _NoisyLabels(Dataset):
    def __init__(self, dataset: Dataset, targets: list[int]) -> None:
        self.dataset, self.targets = dataset, targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], self.targets[index]


def flip_labels(targets: list[int], share: float, seed: int) -> list[int]:
    """Flip ``share`` of the labels to a different, uniformly drawn class (seeded)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    y = torch.tensor(targets)
    n_cls = int(y.max()) + 1
    flip = torch.randperm(len(y), generator=g)[: round(share * len(y))]
    shift = torch.randint(1, n_cls, (len(flip),), generator=g)
    y[flip] = (y[flip] + shift) % n_cls
    return y.tolist()


def build_datasets(cfg: Config) -> tuple[Dataset, Dataset]:
    """(train, test) datasets of the config, in the zero-shot retrieval protocol."""
    if cfg.dataset == "digits":
        from torchvision import transforms as T
        aug = T.RandomCrop(cfg.image_size, padding=2, padding_mode="edge")
        train = DigitsRetrieval("train", views=cfg.views, seed=cfg.seed, canvas=cfg.image_size, transform=aug)
        test = DigitsRetrieval("test", views=cfg.views, seed=cfg.seed, canvas=cfg.image_size)
    else:
        root = Path(cfg.data_root)
        if cfg.dataset == "fake-cub":
            root = root / f"fake-cub-{cfg.fake_classes}x{cfg.fake_per_class}"
            if not (root / "CUB_200_2011").is_dir():
                archive, md5 = make_fake_cub(root / "source", cfg.fake_classes, cfg.fake_per_class, seed=0)
                download_cub(root, url=fake_cub_url(archive), md5=md5)
        cache = cfg.cache_size or None
        if cfg.dataset == "cub":       # fetched (1.1 GB, progress bar, MD5) on first use; reused afterwards
            download_cub(root)
        train = CUB200(root, "train", transform=train_transform(cfg.image_size), cache_size=cache)
        test = CUB200(root, "test", transform=eval_transform(cfg.image_size), cache_size=cache)
    if cfg.label_noise > 0:
        train = _NoisyLabels(train, flip_labels(train.targets, cfg.label_noise, cfg.seed))
    return train, test


def build_model(cfg: Config, num_classes: int) -> tuple[RetrievalNet, MetricLoss]:
    """The network and its loss (with proxies) for a config."""
    model = RetrievalNet(cfg.backbone, cfg.embed_dim, cfg.pretrained, cfg.batch_module, cfg.module_kwargs,
                         normalize=cfg.loss != "hyperbolic")
    loss = MetricLoss(cfg.loss, num_classes, cfg.embed_dim, cfg.margin, cfg.alpha,
                      None if cfg.plain_weight < 0 else cfg.plain_weight, m=cfg.m, tau=cfg.tau, c=cfg.curvature,
                      clip_r=cfg.clip_r)
    return model, loss


# ------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def embed_dataset(model: RetrievalNet, dataset: Dataset, batch_size: int = 256, dev: torch.device | None = None,
                  num_workers: int = 0, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, E) and labels (N,) of a whole dataset, in eval mode, on CPU."""
    dev = dev or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda", generator=torch.Generator().manual_seed(0))
    embs, labels = [], []
    dtype = autocast_dtype(dev)
    for x, y in tqdm(loader, desc="embed", leave=False, disable=bars_disabled(progress)):
        x = x.to(dev, non_blocking=True)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            embs.append(model(x).float().cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(embs), torch.cat(labels)


def evaluate(model: RetrievalNet, dataset: Dataset, batch_size: int = 256, with_nmi: bool = True,
             dev: torch.device | None = None) -> dict[str, float]:
    """Recall@1/2/4/8, MAP@R (and NMI) of the model on a test set.

    Raises ``FloatingPointError`` when an embedding is not finite (a diverged model would
    otherwise find each query's twin NaN and score a perfect Recall@1).
    """
    emb, y = embed_dataset(model, dataset, batch_size, dev)
    bad = ~torch.isfinite(emb).all(dim=1)                        # (N,)
    if bad.any():
        raise FloatingPointError(f"{int(bad.sum())} of {len(emb)} test embeddings are NaN or inf: the model "
                                 "diverged; lower lr and train again (--force)")
    return retrieval_metrics(emb, y, with_nmi=with_nmi)


# ------------------------------------------------------------------------------- schedule
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
    Under torchrun (``WORLD_SIZE`` > 1) it trains with DistributedDataParallel: ``batch_size``
    is the global batch, each rank takes its slice; rank 0 evaluates and writes the files.
    BatchNorm is synchronised across GPUs (SyncBatchNorm) unless ``bn_freeze``; on CPU ranks
    (gloo) it stays per rank.
    """
    from torch.nn.parallel import DistributedDataParallel

    from .distributed import GatherBatch, setup

    cfg.validate()
    rank, world_size, local_rank = setup()
    seed_everything(cfg.seed)
    dev = torch.device("cuda", local_rank) if world_size > 1 and torch.cuda.is_available() else device(cfg.device or None)
    lead = rank == 0
    run = cfg.run_dir
    prepare_run_dir(run, cfg, force=force, write=lead)     # refuses another config; writes config.json
    if world_size > 1:
        torch.distributed.barrier()
    train_ds, test_ds = build_datasets(cfg)
    model, criterion = build_model(cfg, num_classes=len(set(train_ds.targets)))
    model.to(dev)
    criterion.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if world_size > 1 and dev.type == "cuda" and not cfg.bn_freeze:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if world_size > 1 and cfg.global_batch:
        model.gather = GatherBatch()
    # BGFormer with lam=1 leaves its label path unused: DDP must be told to expect that
    net = DistributedDataParallel(model, device_ids=[local_rank] if dev.type == "cuda" else None,
                                  find_unused_parameters=cfg.batch_module == "bgformer") if world_size > 1 else model
    module_params = list(model.batch_module.parameters()) if model.batch_module is not None else []
    module_ids = {id(p) for p in module_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in module_ids], "lr": cfg.lr},
              {"params": criterion.proxy_parameters(), "lr": cfg.lr * cfg.proxy_lr_mult, "weight_decay": 0.0}]
    if module_params:
        groups.append({"params": module_params, "lr": cfg.lr * cfg.module_lr_mult})
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = MPerClassBatchSampler(train_ds.targets, cfg.m, cfg.batch_size, cfg.steps_per_epoch or None, cfg.seed,
                                    rank=rank, world_size=world_size)
    steps_per_epoch = sampler.num_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    history: dict[str, Any] = {"config": dataclasses.asdict(cfg), "device": str(dev), "initial": None,
                               "epochs": [], "steps": []}
    start_epoch, start_batch = 0, 0
    last, best = run / "last.pt", run / "best.pt"
    if resume and last.is_file():
        ck = load_checkpoint(last, dev, config=cfg)
        model.load_state_dict(ck["model"])
        criterion.load_state_dict(ck["loss"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng_cpu"])
        if dev.type == "cuda" and "rng_cuda" in ck:
            torch.cuda.set_rng_state(ck["rng_cuda"])
        history = json.loads(ck["history"])
        start_epoch, start_batch = ck["epoch"], ck["batch"]
        if lead:
            print(f"resumed from {last}: epoch {start_epoch}, batch {start_batch}", file=sys.stderr)

    def save_last(epoch: int, batch: int) -> None:
        if not lead:
            return
        state = {"model": model.state_dict(), "loss": criterion.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng_cpu": torch.get_rng_state(), "epoch": epoch,
                 "batch": batch, "history": json.dumps(history), "config": json.dumps(dataclasses.asdict(cfg))}
        if dev.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state()
        _atomic_save(state, last)

    def eval_now() -> dict[str, float]:
        """Rank 0 evaluates; the other ranks wait for it (and get an empty dict)."""
        metrics = evaluate(model, test_ds, cfg.eval_batch_size, cfg.eval_nmi, dev) if lead else {}
        if world_size > 1:
            torch.distributed.barrier()
        return metrics

    if history["initial"] is None:
        history["initial"] = eval_now()
        if lead:
            _atomic_json(history, run / "history.json")
    dtype = autocast_dtype(dev) if cfg.amp else None
    loader_kwargs = dict(num_workers=cfg.num_workers, pin_memory=dev.type == "cuda",
                         persistent_workers=False)
    epochs_bar = tqdm(range(start_epoch, cfg.epochs), desc=f"{cfg.preset}", disable=bars_disabled(cfg.progress),
                      initial=start_epoch, total=cfg.epochs)
    for epoch in epochs_bar:
        set_train_mode(model, cfg.bn_freeze)
        sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
        # the loader's own generator: creating its iterator must not draw from the global RNG,
        # whose state the checkpoint carries (a resumed run would otherwise drift)
        loader = DataLoader(SeededSamples(train_ds), batch_sampler=SeededBatches(sampler, cfg.seed),
                            generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch), **loader_kwargs)
        t0, n_images = time.perf_counter(), 0
        steps = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=bars_disabled(cfg.progress),
                     initial=sampler.start_batch, total=steps_per_epoch)
        for batch_idx, (x, y) in enumerate(steps, start=sampler.start_batch):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                emb, y2 = net(x, y)
            loss = criterion(emb, y2, batch_size=x.shape[0] * (world_size if model.gather else 1))
            if not (torch.isfinite(loss) & torch.isfinite(emb).all()):
                raise _diverged("the loss" if torch.isfinite(emb).all() else "the embeddings", epoch, batch_idx, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world_size > 1:            # the proxies live outside DDP: average their gradients by hand
                for p in criterion.proxy_parameters():
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world_size
            optimizer.step()
            bad = first_nonfinite([*model.named_parameters(), *criterion.named_parameters()])
            if bad is not None:
                raise _diverged(f"the weights ({bad})", epoch, batch_idx, cfg)
            scheduler.step()
            n_images += x.shape[0]
            loss_value = loss.item()
            history["steps"].append({"epoch": epoch, "batch": batch_idx, "loss": loss_value})
            steps.set_postfix(loss=f"{loss_value:.3f}")
            if cfg.ckpt_every and (batch_idx + 1) % cfg.ckpt_every == 0 and batch_idx + 1 < steps_per_epoch:
                save_last(epoch, batch_idx + 1)
        seconds = time.perf_counter() - t0
        metrics = eval_now()
        if not lead:
            continue
        epoch_losses = [s["loss"] for s in history["steps"] if s["epoch"] == epoch]
        record = {"epoch": epoch + 1, "loss": sum(epoch_losses) / max(1, len(epoch_losses)), **metrics,
                  "train_seconds": seconds, "images_per_s": n_images / max(seconds, 1e-9)}
        history["epochs"].append(record)
        previous_best = max((e["R@1"] for e in history["epochs"][:-1]), default=-1.0)
        if metrics["R@1"] > previous_best:
            _atomic_save({"model": model.state_dict(), "epoch": epoch + 1, "metrics": metrics,
                          "config": json.dumps(dataclasses.asdict(cfg))}, best)
        save_last(epoch + 1, 0)
        _atomic_json(history, run / "history.json")
        epochs_bar.set_postfix({"R@1": f"{metrics['R@1']:.3f}"})
        if callback is not None:
            callback(history)
    return history


# ------------------------------------------------------------------------------------- CLI
def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bgtutorial.train", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="digits", help=f"one of {', '.join(PRESETS)}, optionally + -batchformer/-bgformer")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt when it exists")
    p.add_argument("--force", action="store_true",
                   help="delete the run files in <out> (config, history, checkpoints) and train from scratch")
    for f in dataclasses.fields(Config):
        if f.name == "preset":
            continue
        kind = {bool: _parse_bool, int: int, float: float, str: str, dict: json.loads}[
            {"bool": bool, "int": int, "float": float, "str": str, "dict": dict}[f.type]]
        # torchrun's own parser takes "--m" for an abbreviation of its options: "--m_per_class" is the alias to use there
        names = [f"--{f.name}"] + (["--m_per_class"] if f.name == "m" else [])
        p.add_argument(*names, dest=f.name, type=kind, default=None,
                       help=argparse.SUPPRESS if f.name == "progress" else None)
    return p


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per name, one column per metric."""
    cols = list(next(iter(rows.values())).keys())
    lines = [f"{'':<14}" + "".join(f"{c:>8}" for c in cols)]
    for name, vals in rows.items():
        lines.append(f"{name:<14}" + "".join(f"{vals[c]:>8.3f}" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("preset", "resume", "force")}
    try:
        cfg = load_config(args.preset, **overrides)
        if cfg.dataset == "cub" and not torch.cuda.is_available():
            print("warning: the CUB-200 presets are meant for a CUDA GPU; on this CPU it will be very slow",
                  file=sys.stderr)
        history = train(cfg, resume=args.resume, force=args.force)
    except CLI_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .distributed import teardown, world

    rank = world()[0]
    teardown()
    if rank != 0:
        return 0
    keys = ("R@1", "R@2", "R@4", "R@8", "MAP@R") + (("NMI",) if cfg.eval_nmi else ())
    print(format_table({"before": {k: history["initial"][k] for k in keys},
                        "after": {k: history["epochs"][-1][k] for k in keys}}))
    print(f"run folder: {cfg.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
