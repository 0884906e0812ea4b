"""Training engine and CLI: ``python -m bgtutorial.train --preset glyphs [--field value ...] [--resume]``.

* Presets live in ``bgtutorial/configs/*.toml`` (with their sources); a preset name may end
  in ``-batchformer`` or ``-bgformer`` to add that batch module; any config field can be
  overridden on the command line (``--epochs 3 --lr 3e-4``).
* AdamW with parameter groups (backbone/head at ``lr``, proxies at ``proxy_lr_mult``·lr,
  batch module at ``module_lr`` or ``module_lr_mult``·lr), cosine or step schedule per step.
* The reference recipes' training details as options (docs/recipes.md): warm-up epochs that
  train only the head, the proxies and the batch module (``warm_epochs``); BatchNorm frozen
  (``bn_freeze``, ``bn_freeze_affine``); parameters kept frozen (``frozen``); gradient clipping
  by value or norm; random or m-per-class batches (``sampler``).
* Mixed precision that fits the device (``precision``: bf16, fp16 + gradient scaler, or
  float32; see :mod:`bgtutorial.precision`); channels_last on CUDA.
* Evaluation every ``eval_every`` epochs and always after the last one (Recall@1/2/4/8, MAP@R,
  NMI); ``history.json`` after every epoch. Reported figures are the *last* epoch's: no
  checkpoint is chosen on the test classes. With ``val_classes`` > 0 that many training
  classes are held out, evaluated every epoch, and ``best_val.pt`` keeps the best of them.
* Checkpoints ``last.pt`` (every ``ckpt_every`` steps and every epoch), written atomically
  (temporary file, then rename) and read with ``weights_only=True``;
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
import contextlib
import dataclasses
import json
import math
import sys
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import atomic_json as _atomic_json
from .checkpoint import atomic_save as _atomic_save
from .checkpoint import check_optimizer_state, first_nonfinite, hold_run_dir, load_checkpoint, prepare_run_dir, restoring
from .config_checks import check_bounds, check_paths, check_preset_values, check_types
from .data import (CUB200, DigitsRetrieval, GlyphsRetrieval, MPerClassBatchSampler, download_cub, eval_transform, fake_cub_url,
                   make_fake_cub, train_transform)
from .losses import LOSSES, MetricLoss
from .metrics import retrieval_metrics
from .models import BACKBONES, BATCH_MODULES, HEAD_INITS, POOLINGS, RetrievalNet, input_stats
from .precision import PRECISIONS, Precision
from .utils import CLI_ERRORS, autocast_dtype, bars_disabled, device, error_line, seed_everything

__all__ = ["Config", "load_config", "train", "evaluate", "embed_dataset", "build_datasets", "build_model",
           "load_checkpoint", "PRESETS"]

PRESETS = ("glyphs", "glyphs-quick", "glyphs-scratch", "digits", "smoke", "cub-resnet50", "cub-vits")
DATASETS = ("glyphs", "digits", "fake-cub", "cub")
MODULES = tuple(BATCH_MODULES)         # "none", "batchformer", "bgformer": listed once, in models.py
SAMPLERS = ("m_per_class", "random")


@dataclass
class Config:
    """Every knob of a run. Presets set some fields; the CLI can override any of them."""
    preset: str = "glyphs"
    dataset: str = "glyphs"            # glyphs | digits | fake-cub | cub
    data_root: str = "data"
    out: str = ""                      # run folder (default runs/<preset>-seed<seed>)
    seed: int = 0
    # model
    backbone: str = "smallcnn"
    pretrained: bool = False
    embed_dim: int = 128
    pooling: str = "avg"               # avg | avgmax (ResNets; Proxy-Anchor's code sums both)
    head_init: str = "default"         # default | kaiming_fanout | orthogonal
    batch_module: str = "none"         # none | batchformer | bgformer
    module_kwargs: dict = field(default_factory=dict)
    module_lr_mult: float = 1.0
    module_lr: float = 0.0             # >0: the batch module's own learning rate (overrides module_lr_mult)
    # loss
    loss: str = "proxy_anchor"
    margin: float = 0.1
    alpha: float = 32.0
    proxy_lr_mult: float = 100.0
    proxy_weight_decay: float = 0.0    # AdamW weight decay of the proxies (Proxy-Anchor's code: the common 1e-4)
    tau: float = 0.2                   # hyperbolic loss: temperature
    curvature: float = 0.1             # hyperbolic loss: c of the Poincaré ball
    clip_r: float = 2.3                # hyperbolic loss: feature clipping radius
    pair_reduction: str = "sum"        # hyperbolic loss over view pairs: sum (Hyp-ViT) | mean
    plain_weight: float = -1.0         # <0: one loss over the doubled batch; else α·L(plain)+(1-α)·L(module)
    # optimisation
    epochs: int = 8
    batch_size: int = 60
    m: int = 12
    sampler: str = "m_per_class"       # m_per_class | random (Proxy-Anchor's baseline batches)
    steps_per_epoch: int = 0           # 0: len(train) // batch_size
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"           # cosine | step | constant
    lr_step: int = 10                  # epochs, for schedule="step"
    lr_gamma: float = 0.5
    warm_epochs: int = 0               # first epochs train only head, proxies and batch module (backbone frozen)
    frozen: str = ""                   # comma-separated parameter-name prefixes never trained ("backbone.patch_embed")
    clip_grad_value: float = 0.0       # >0: clip each gradient entry to ±value (Proxy-Anchor: 10)
    clip_grad_norm: float = 0.0        # >0: clip the global gradient norm (Hyp-ViT: 3)
    # data
    image_size: int = 32
    crop_scale_min: float = 0.08       # CUB: RandomResizedCrop's smallest area share (Hyp-ViT: 0.2)
    interpolation: str = "bilinear"    # CUB: bilinear | bicubic (Hyp-ViT)
    resize: int = 0                    # CUB evaluation: shorter side before the centre crop (0: image_size·8/7)
    val_classes: int = 0               # >0: hold out that many training classes for model selection
    views: int = 4                     # digits only
    glyph_classes: int = 0             # glyphs only: 0 = every distinct character (about 200); else an evenly spaced subset
    glyph_per_class: int = 60          # glyphs only: images per class (CUB-200 has about 59)
    data_seed: int = 0                 # glyphs: the renderings' seed, fixed like CUB's photographs (`seed` varies training); also the long-tailed split's
    fake_classes: int = 20             # fake-cub only
    fake_per_class: int = 8
    label_noise: float = 0.0           # share of training labels flipped (robustness study)
    num_workers: int = 0
    cache_size: int = 0                # CUB only: >0 decodes and resizes images once into a memory-mapped cache
    eval_batch_size: int = 256
    # runtime
    device: str = ""                   # "" = CUDA when present, else CPU
    precision: str = "auto"            # auto (bf16 on CUDA >= 8.0, fp16 + scaler below, fp32 on CPU) | bf16 | fp16 | fp32
    ckpt_every: int = 0                # also save last.pt every N steps (0: once per epoch)
    eval_every: int = 1                # evaluate on the test classes every N epochs (and after the last)
    bn_freeze: bool = False            # BatchNorm statistics frozen (eval mode) while training (Kim et al.'s code)
    bn_freeze_affine: bool = False     # ... and BatchNorm's weight and bias never trained
    global_batch: bool = False         # under torchrun: the batch module and the loss see the global batch
    eval_nmi: bool = True
    progress: bool = True
    imbalance: float = 1.0             # long-tailed training classes: rho = n_max / n_min (1 = as is; Cao et al. 2019)
    shared_head: bool = True           # False: the module stream gets its own head and its own loss (own proxies)
    # Corrupted training images (robustness study): a fixed share of the TRAINING images (the test
    # split and the validation classes stay clean) is corrupted, each either occluded (a random
    # square patch, 40-70 % of the side, so 16-49 % of the area, replaced by uniform noise) or
    # replaced entirely by noise, half and half by a seeded draw. Which images, which kind, where
    # the patch sits and the noise itself are a pure function of (data_seed, index): the same
    # images are corrupted in every epoch, for every method and every training seed, like
    # photographs that are bad in the data set. Applied after the augmentation; the noise spans
    # each channel's own range in that image (:func:`corrupt_plan`, :func:`corrupt_image`).
    corrupt: float = 0.0               # share p in [0, 1] of training images corrupted (0: none)

    def validate(self) -> "Config":
        """Raise ``ValueError`` with the fix for a config that cannot run (types and bounds:
        :mod:`bgtutorial.config_checks`)."""
        check_types(dataclasses.asdict(self), Config)
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.batch_module not in MODULES:
            raise ValueError(f"unknown batch_module {self.batch_module!r}; choose one of {', '.join(MODULES)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
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
        for name, allowed in (("pooling", POOLINGS), ("head_init", HEAD_INITS), ("precision", PRECISIONS),
                              ("sampler", SAMPLERS), ("interpolation", ("bilinear", "bicubic")),
                              ("pair_reduction", ("sum", "mean"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.sampler == "random" and self.batch_module != "none":
            raise ValueError("the batch modules need positives in every batch: use sampler='m_per_class' with "
                             f"batch_module={self.batch_module!r} (random batches are for the plain baseline)")
        if self.sampler == "random" and self.loss == "hyperbolic":
            raise ValueError("the hyperbolic loss needs m views per class: use sampler='m_per_class'")
        if not 0 <= self.warm_epochs < self.epochs:
            raise ValueError(f"warm_epochs must be in [0, epochs), got {self.warm_epochs} with epochs={self.epochs}")
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if self.m < 1 or self.batch_size % self.m != 0:
            raise ValueError(f"batch_size={self.batch_size} must be a positive multiple of m={self.m} "
                             f"(samples per class); try batch_size={max(self.m, self.batch_size // max(self.m, 1) * self.m)}")
        if self.device:
            device(self.device)        # a device that is not there: ValueError with the choices
        if self.glyph_per_class < 2 or not (self.glyph_classes == 0 or self.glyph_classes >= 4):
            raise ValueError(f"glyph_per_class must be >= 2 and glyph_classes 0 (all) or >= 4, got "
                             f"{self.glyph_per_class} and {self.glyph_classes}")
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"label_noise must be in [0, 1), got {self.label_noise}")
        if self.imbalance < 1.0:
            raise ValueError(f"imbalance is rho = n_max / n_min, the ratio of the largest to the smallest training "
                             f"class, so it must be >= 1 (1 keeps the data as is), got {self.imbalance}; "
                             "try --imbalance 10")
        if not self.shared_head and self.batch_module == "none":
            raise ValueError("shared_head=False gives the batch module's stream its own head: it needs a batch "
                             "module (batch_module='batchformer' or 'bgformer'), or leave shared_head=True")
        if not 0.0 <= self.corrupt <= 1.0:
            raise ValueError(f"corrupt must be in [0, 1] (the share of training images corrupted), got {self.corrupt}")
        check_bounds(self)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.preset}-seed{self.seed}")


#: smallest allowed value of the numeric fields (``lr`` and ``lr_gamma`` must be > 0)
_MINIMUM = {"batch_size": 1, "m": 1, "epochs": 1, "lr_step": 1, "eval_batch_size": 1, "embed_dim": 1,
            "image_size": 1, "views": 1, "fake_classes": 2, "fake_per_class": 1, "steps_per_epoch": 0,
            "weight_decay": 0, "proxy_lr_mult": 0, "module_lr_mult": 0, "ckpt_every": 0, "num_workers": 0,
            "cache_size": 0, "warm_epochs": 0, "clip_grad_value": 0, "clip_grad_norm": 0, "module_lr": 0,
            "proxy_weight_decay": 0, "val_classes": 0, "eval_every": 1, "resize": 0}


def _preset_file(name: str) -> dict[str, Any]:
    """The fields of ``configs/<name>.toml``, checked (:func:`~bgtutorial.config_checks.check_preset_values`).

    ``name`` must be one of the files there: a path (``../../pyproject``) is refused.
    """
    folder = resources.files("bgtutorial") / "configs"
    names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))
    if name not in names:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} "
                         "(optionally followed by -batchformer or -bgformer)")
    path = folder / f"{name}.toml"
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"preset file {path} is not valid TOML ({err}); fix that line") from None
    check_preset_values(values, Config, f"preset file {path}", tables=tuple(BATCH_MODULES))
    return values


def load_config(preset: str = "glyphs", **overrides: Any) -> Config:
    """A validated :class:`Config` from a preset (``"digits-batchformer"`` adds the module) and overrides.

    A preset file may hold a table per batch module (``[bgformer]``): its fields apply only when
    the preset name asks for that module, e.g. the follow-up's BGFormer settings in ``cub-vits``.
    Precedence: the preset's fields, then its module table, then ``overrides``.
    """
    base, module = preset, None
    for mod in (name for name in BATCH_MODULES if name != "none"):
        if preset.endswith("-" + mod):
            base, module = preset[: -len(mod) - 1], mod
    values: dict[str, Any] = {"preset": preset, **_preset_file(base)}
    tables = {name: values.pop(name) for name in BATCH_MODULES if isinstance(values.get(name), dict)}
    module = overrides.get("batch_module", module)       # experiments pass the module as an override
    if module:
        values.update(tables.get(module, {}))
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


#: the two kinds of corruption; ``"occlude"``: a square patch of noise, ``"noise"``: the whole image
CORRUPTIONS = ("occlude", "noise")
#: side of the occluding square as a share of the image side: drawn uniformly in this range
OCCLUDE_SIDE = (0.4, 0.7)


def corrupt_plan(n: int, share: float, seed: int) -> dict[int, str]:
    """Which of ``n`` images are corrupted and how: ``{index: "occlude" | "noise"}`` (seeded).

    ``round(share * n)`` indices, drawn without replacement; each gets a kind by a fair seeded
    coin. A pure function of (n, share, seed). ``share`` outside [0, 1] raises ``ValueError``.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the corrupted share must be in [0, 1], got {share}")
    g = torch.Generator().manual_seed(20_000 + seed)
    chosen = torch.randperm(n, generator=g)[: round(share * n)]
    kinds = torch.randint(0, len(CORRUPTIONS), (len(chosen),), generator=g)
    return {int(i): CORRUPTIONS[int(c)] for i, c in zip(chosen, kinds)}


def corrupt_image(x: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """A corrupted copy of image ``x`` (C, H, W); ``kind`` "occlude" or "noise"; seeded by ``seed``.

    The noise is uniform between each channel's smallest and largest value in ``x`` (so it stays
    in the image's range, normalised or not). "occlude" replaces a square whose side is a share
    in :data:`OCCLUDE_SIDE` of the shorter image side, at a uniformly drawn position; "noise"
    replaces every pixel. Deterministic: the same (x, kind, seed) gives the same image.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"kind must be one of {', '.join(CORRUPTIONS)}, got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    c, h, w = x.shape
    lo = x.amin(dim=(1, 2), keepdim=True)                          # (C, 1, 1)
    hi = x.amax(dim=(1, 2), keepdim=True)
    noise = lo + (hi - lo) * torch.rand(c, h, w, generator=g, dtype=torch.float32).to(x.dtype)   # (C, H, W)
    if kind == "noise":
        return noise
    frac = OCCLUDE_SIDE[0] + (OCCLUDE_SIDE[1] - OCCLUDE_SIDE[0]) * float(torch.rand(1, generator=g))
    side = max(1, round(frac * min(h, w)))
    top = int(torch.randint(0, h - side + 1, (1,), generator=g))
    left = int(torch.randint(0, w - side + 1, (1,), generator=g))
    out = x.clone()
    out[:, top:top + side, left:left + side] = noise[:, top:top + side, left:left + side]
    return out


class CorruptedImages(Dataset):
    """``dataset`` with the images of :func:`corrupt_plan` corrupted (labels and ``targets`` unchanged).

    ``plan`` maps index -> kind; image ``i``'s corruption is seeded by ``(seed, i)``, so it is the
    same in every epoch (the augmentation before it still varies).
    """

    def __init__(self, dataset: Dataset, share: float, seed: int) -> None:
        self.dataset, self.seed = dataset, seed
        self.targets = list(dataset.targets)
        self.plan = corrupt_plan(len(dataset), share, seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        kind = self.plan.get(index)
        if kind is None:
            return x, y
        return corrupt_image(x, kind, (self.seed * 1_000_003 + index) % 2**62), y


class IndexSubset(Dataset):
    """The samples ``indices`` of ``dataset`` (labels unchanged), with ``targets``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        self.targets = [dataset.targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


class ClassSubset(IndexSubset):
    """The samples of ``dataset`` whose label is in ``classes`` (labels unchanged), with ``targets``."""

    def __init__(self, dataset: Dataset, classes: set[int]) -> None:
        super().__init__(dataset, [i for i, t in enumerate(dataset.targets) if t in classes])


def long_tail_counts(counts: Sequence[int], imbalance: float, seed: int) -> list[int]:
    """Images to keep per class for an exponential long-tailed profile with ratio ``imbalance``.

    The profile of the long-tailed CIFAR benchmarks (Cao et al. 2019, "Learning Imbalanced Datasets
    with Label-Distribution-Aware Margin Loss", arXiv 1906.07413, Sec. 4.1):
    ``n_c = round(n_max * rho ** (-r_c / (C - 1)))``, where ``counts[c]`` holds class c's images,
    ``n_max = max(counts)``, ``rho = imbalance`` and ``r_c`` is class c's rank (0 = head, C-1 = tail)
    in a permutation of the C classes seeded by ``seed``. Each class keeps at least 2 images (a
    positive pair) and never more than it has. ``imbalance=1`` keeps every class whole.
    """
    if imbalance < 1.0:
        raise ValueError(f"imbalance rho = n_max / n_min must be >= 1, got {imbalance}")
    counts = [int(n) for n in counts]
    n_classes, n_max = len(counts), max(counts)
    rank = np.empty(n_classes, dtype=int)
    rank[np.random.default_rng([seed, 1906]).permutation(n_classes)] = np.arange(n_classes)   # class -> rank
    out = []
    for c, have in enumerate(counts):
        target = n_max * imbalance ** (-rank[c] / max(n_classes - 1, 1))
        out.append(min(have, max(2, int(round(target)))))
    return out


def long_tailed(dataset: Dataset, imbalance: float, seed: int) -> Dataset:
    """A long-tailed subset of a training set (:func:`long_tail_counts`), or ``dataset`` itself for ``imbalance=1``.

    Labels are kept; which images a class keeps is a seeded choice. The same ``seed`` gives the
    same subset whatever the training seed, so every method and seed trains on one long-tailed split.
    """
    if imbalance == 1.0:
        return dataset
    targets = np.asarray(dataset.targets)
    classes = np.unique(targets)
    members = [np.flatnonzero(targets == c) for c in classes]                    # indices of each class
    keep = long_tail_counts([len(ix) for ix in members], imbalance, seed)
    rng = np.random.default_rng([seed, 1906, 1])
    kept = np.concatenate([rng.choice(ix, n, replace=False) for ix, n in zip(members, keep)])
    return IndexSubset(dataset, np.sort(kept))


def build_splits(cfg: Config) -> tuple[Dataset, Dataset | None, Dataset]:
    """(train, validation or None, test) datasets of the config, in the zero-shot retrieval protocol.

    With ``cfg.val_classes = n`` the n highest-numbered training classes become validation
    classes (evaluation transform, never trained on), following Musgrave et al.'s advice to select
    checkpoints and hyper-parameters on classes that are neither trained on nor tested; the
    remaining training labels stay 0..C-n-1, so the proxies need no relabelling.
    With ``cfg.imbalance = rho > 1`` the (remaining) training classes are then cut to a long-tailed
    profile (:func:`long_tailed`, seeded by ``data_seed``); validation and test classes stay whole.
    Label noise (``label_noise``) comes last, on the images that are kept.
    """
    if cfg.dataset in ("glyphs", "digits"):
        from torchvision import transforms as T
        aug = T.RandomCrop(cfg.image_size, padding=2, padding_mode="edge")
        if cfg.dataset == "glyphs":    # rendered once into <data_root>/glyphs-<hash>/, then loaded from there
            make = lambda split, transform=None: GlyphsRetrieval(  # noqa: E731
                split, per_class=cfg.glyph_per_class, seed=cfg.data_seed, canvas=cfg.image_size, transform=transform,
                num_classes=cfg.glyph_classes or None, root=cfg.data_root, progress=cfg.progress)
        else:
            make = lambda split, transform=None: DigitsRetrieval(split, views=cfg.views, seed=cfg.seed,  # noqa: E731
                                                                 canvas=cfg.image_size, transform=transform)
        train, test = make("train", aug), make("test")
        train_eval = make("train") if cfg.val_classes else None      # the training classes, evaluation transform
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
        mean, std = input_stats(cfg.backbone)      # what the pretrained weights expect (0.5 for the ViTs)
        test_tf = eval_transform(cfg.image_size, cfg.resize or None, cfg.interpolation, mean, std)
        train = CUB200(root, "train", cache_size=cache,
                       transform=train_transform(cfg.image_size, (cfg.crop_scale_min, 1.0), cfg.interpolation, mean, std))
        test = CUB200(root, "test", transform=test_tf, cache_size=cache)
        train_eval = CUB200(root, "train", transform=test_tf, cache_size=cache) if cfg.val_classes else None
    val = None
    if cfg.val_classes:
        classes = sorted(set(train.targets))
        if not 2 <= cfg.val_classes <= len(classes) - 2:
            raise ValueError(f"val_classes={cfg.val_classes} must leave at least 2 classes on each side of the "
                             f"{len(classes)} training classes")
        held = set(classes[-cfg.val_classes:])
        val = ClassSubset(train_eval, held)
        train = ClassSubset(train, set(classes) - held)
    if cfg.imbalance != 1.0:       # long-tailed training classes; validation and test stay whole
        train = long_tailed(train, cfg.imbalance, cfg.data_seed)
    if cfg.corrupt > 0:            # seeded by data_seed: the same images for every method and training seed
        train = CorruptedImages(train, cfg.corrupt, cfg.data_seed)
    if cfg.label_noise > 0:
        train = _NoisyLabels(train, flip_labels(train.targets, cfg.label_noise, cfg.seed))
    return train, val, test


def build_datasets(cfg: Config) -> tuple[Dataset, Dataset]:
    """(train, test) datasets of the config (see :func:`build_splits` for the validation classes)."""
    train, _, test = build_splits(cfg)
    return train, test


def build_net(cfg: Config, with_module: bool = True, pretrained: bool | None = None) -> RetrievalNet:
    """The config's network; ``with_module=False`` gives the test-time network (no batch module)."""
    return RetrievalNet(cfg.backbone, cfg.embed_dim, cfg.pretrained if pretrained is None else pretrained,
                        cfg.batch_module if with_module else None, cfg.module_kwargs,
                        normalize=cfg.loss != "hyperbolic", pooling=cfg.pooling, head_init=cfg.head_init,
                        shared_head=cfg.shared_head)


def build_model(cfg: Config, num_classes: int) -> tuple[RetrievalNet, MetricLoss]:
    """The network and its loss (with proxies) for a config."""
    loss = MetricLoss(cfg.loss, num_classes, cfg.embed_dim, cfg.margin, cfg.alpha,
                      None if cfg.plain_weight < 0 else cfg.plain_weight, m=cfg.m, tau=cfg.tau, c=cfg.curvature,
                      clip_r=cfg.clip_r, pair_reduction=cfg.pair_reduction, separate_module_loss=not cfg.shared_head)
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


# ------------------------------------------------------------------------------ evaluation
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
    from .losses import poincare_knn
    from .metrics import map_at_r, nmi, recall_at_k

    rmax = int(labels.unique(return_counts=True)[1].max()) - 1
    nn_ = poincare_knn(z, min(max(8, rmax), z.shape[0] - 1), c)
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
             dev: torch.device | None = None, cfg: Config | None = None) -> dict[str, float]:
    """Recall@1/2/4/8, MAP@R (and NMI) of the model on a test set (cosine of the embeddings);
    for a config with the hyperbolic loss, both of Hyp-ViT's evaluations (:func:`hyperbolic_metrics`).
    This is how a run's history scores it; ``experiments.head_metrics`` and ``embed_run`` follow it.

    A network with an unshared module head (``shared_head=False``) also gets that head's metrics on
    the same plain test features, keys prefixed ``module_head_`` (by Poincaré distance for a
    hyperbolic run): the history then holds the train/test mismatch per epoch, without weights
    (:func:`bgtutorial.experiments.head_metrics` computes the same from a checkpoint).

    Raises ``FloatingPointError`` when an embedding is not finite (a diverged model would
    otherwise find each query's twin NaN and score a perfect Recall@1).
    """
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
    """:func:`train`'s body, run while the folder is locked."""
    from torch.nn.parallel import DistributedDataParallel

    from .data import RandomBatchSampler
    from .distributed import GatherBatch, setup

    rank, world_size, local_rank = setup()
    seed_everything(cfg.seed)
    dev = torch.device("cuda", local_rank) if world_size > 1 and torch.cuda.is_available() else device(cfg.device or None)
    lead = rank == 0
    run = cfg.run_dir
    prepare_run_dir(run, cfg, force=force, write=False)    # refuses another config before any work
    train_ds, val_ds, test_ds = build_splits(cfg)
    model, criterion = build_model(cfg, num_classes=len(set(train_ds.targets)))
    prefixes = [p.strip() for p in cfg.frozen.split(",") if p.strip()]
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            raise ValueError(f"frozen={prefix!r} matches no parameter of {cfg.backbone}; parameter names start "
                             f"with e.g. {', '.join(sorted({n.rsplit('.', 2)[0] for n in names})[:6])}")
    prepare_run_dir(run, cfg, force=force, write=lead)     # data and model built: (force: clear,) write config.json
    if world_size > 1:
        torch.distributed.barrier()
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
    optimizer = build_optimizer(cfg, model, criterion)
    prec = Precision(cfg.precision, dev)
    if cfg.sampler == "random":
        sampler = RandomBatchSampler(len(train_ds), cfg.batch_size, cfg.steps_per_epoch or None, cfg.seed,
                                     rank=rank, world_size=world_size)
    else:
        sampler = MPerClassBatchSampler(train_ds.targets, cfg.m, cfg.batch_size, cfg.steps_per_epoch or None,
                                        cfg.seed, rank=rank, world_size=world_size)
    steps_per_epoch = sampler.num_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    history: dict[str, Any] = {"config": dataclasses.asdict(cfg), "device": str(dev), "precision": prec.name,
                               "initial": None, "epochs": [], "steps": []}
    start_epoch, start_batch = 0, 0
    last, best_val = run / "last.pt", run / "best_val.pt"
    if resume and last.is_file():
        ck = load_checkpoint(last, dev, config=cfg)
        with restoring(last):         # a missing entry or a tensor of another shape: one CheckpointError
            model.load_state_dict(ck["model"])
            criterion.load_state_dict(ck["loss"])
            optimizer.load_state_dict(ck["optimizer"])
            check_optimizer_state(optimizer)
            scheduler.load_state_dict(ck["scheduler"])
            prec.load_state_dict(ck.get("scaler", {}))
            torch.set_rng_state(ck["rng_cpu"])
            if dev.type == "cuda" and "rng_cuda" in ck:
                torch.cuda.set_rng_state(ck["rng_cuda"])
            history = json.loads(ck["history"])
            start_epoch, start_batch = ck["epoch"], ck["batch"]
            if not (isinstance(history, dict) and 0 <= start_epoch <= cfg.epochs and 0 <= start_batch < steps_per_epoch):
                raise ValueError(f"epoch {start_epoch}, batch {start_batch} is not a point of this run's schedule")
        if lead:
            print(f"resumed from {last}: epoch {start_epoch}, batch {start_batch}", file=sys.stderr)
            if not (run / "history.json").is_file():   # deleted (it was broken): restored from last.pt
                _atomic_json(history, run / "history.json")

    def save_last(epoch: int, batch: int) -> None:
        if not lead:
            return
        state = {"model": model.state_dict(), "loss": criterion.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": prec.state_dict(), "rng_cpu": torch.get_rng_state(),
                 "epoch": epoch, "batch": batch, "history": json.dumps(history),
                 "config": json.dumps(dataclasses.asdict(cfg))}
        if dev.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state()
        _atomic_save(state, last)

    def eval_now(dataset: Dataset) -> dict[str, float]:
        """Rank 0 evaluates; the other ranks wait for it (and get an empty dict)."""
        metrics = evaluate(model, dataset, cfg.eval_batch_size, cfg.eval_nmi, dev, cfg) if lead else {}
        if world_size > 1:
            torch.distributed.barrier()
        return metrics

    if history["initial"] is None:
        history["initial"] = eval_now(test_ds)
        if val_ds is not None:
            history["initial_val"] = eval_now(val_ds)
        if lead:
            _atomic_json(history, run / "history.json")
    loader_kwargs = dict(num_workers=cfg.num_workers, pin_memory=dev.type == "cuda",
                         persistent_workers=False)
    clip_params = [p for p in model.parameters()] + criterion.proxy_parameters()
    epochs_bar = tqdm(range(start_epoch, cfg.epochs), desc=f"{cfg.preset}", disable=bars_disabled(cfg.progress),
                      initial=start_epoch, total=cfg.epochs)
    for epoch in epochs_bar:
        set_train_mode(model, cfg.bn_freeze)
        set_trainable(model, cfg, epoch)
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
            with prec.autocast():
                emb, y2 = net(x, y)
            loss = criterion(emb, y2, batch_size=x.shape[0] * (world_size if model.gather else 1))
            if not (torch.isfinite(loss) & torch.isfinite(emb).all()):
                raise _diverged("the loss" if torch.isfinite(emb).all() else "the embeddings", epoch, batch_idx, cfg)
            optimizer.zero_grad(set_to_none=True)
            prec.backward(loss)
            if world_size > 1:            # the proxies live outside DDP: average their gradients by hand
                for p in criterion.proxy_parameters():
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world_size
            if cfg.clip_grad_value or cfg.clip_grad_norm:
                prec.unscale(optimizer)   # clip the true gradients, not the fp16-scaled ones
                grads = [p for p in clip_params if p.grad is not None]
                if cfg.clip_grad_value:
                    torch.nn.utils.clip_grad_value_(grads, cfg.clip_grad_value)
                if cfg.clip_grad_norm:
                    torch.nn.utils.clip_grad_norm_(grads, cfg.clip_grad_norm)
            stepped = prec.step(optimizer)
            bad = first_nonfinite([*model.named_parameters(), *criterion.named_parameters()])
            if bad is not None:
                raise _diverged(f"the weights ({bad})", epoch, batch_idx, cfg)
            if stepped:
                scheduler.step()
            else:                         # fp16 overflow: the scaler skipped this step; the schedule still advances
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                    scheduler.step()
            n_images += x.shape[0]
            loss_value = loss.item()
            record = {"epoch": epoch, "batch": batch_idx, "loss": loss_value}
            if criterion.last_parts is not None:      # a batch module is on: each half's loss apart
                record["loss_plain"], record["loss_module"] = (v.item() for v in criterion.last_parts)
            history["steps"].append(record)
            steps.set_postfix(loss=f"{loss_value:.3f}")
            if cfg.ckpt_every and (batch_idx + 1) % cfg.ckpt_every == 0 and batch_idx + 1 < steps_per_epoch:
                save_last(epoch, batch_idx + 1)
        seconds = time.perf_counter() - t0
        evaluate_test = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        metrics = eval_now(test_ds) if evaluate_test else {}
        val_metrics = eval_now(val_ds) if val_ds is not None else None
        if not lead:
            continue
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
                _atomic_save({"model": model.state_dict(), "epoch": epoch + 1, "val": val_metrics,
                              "config": json.dumps(dataclasses.asdict(cfg))}, best_val)
        history["epochs"].append(record)
        save_last(epoch + 1, 0)
        _atomic_json(history, run / "history.json")
        if metrics:
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
    p.add_argument("--preset", default="glyphs", help=f"one of {', '.join(PRESETS)}, optionally + -batchformer/-bgformer")
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


def interrupted_message(run_dir: Path, command: Sequence[str]) -> str:
    """What to print when Ctrl-C stops a run: where its last checkpoint stands and how to continue.

    ``command`` is the interrupted command line; the advice drops its ``--force`` (which would
    delete the checkpoint) and adds ``--resume``.
    """
    import shlex

    last = Path(run_dir) / "last.pt"
    resume = shlex.join([*(a for a in command if a != "--force"), *([] if "--resume" in command else ["--resume"])])
    try:
        ck = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        epoch, batch, total = int(ck["epoch"]), int(ck["batch"]), json.loads(ck["config"])["epochs"]
    except Exception:           # no checkpoint yet, or one being written when Ctrl-C came
        return (f"interrupted before {last} held a checkpoint: nothing to resume; run the same command again "
                f"to start over")
    where = (f"after {epoch} of {total} epochs" if batch == 0 else
             f"in epoch {epoch + 1} of {total}, after {batch} batch{'es' if batch > 1 else ''}")
    return f"interrupted: {last} holds the run {where}; continue it with: {resume}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("preset", "resume", "force")}
    cfg = None
    try:
        cfg = load_config(args.preset, **overrides)
        if cfg.dataset == "cub" and not torch.cuda.is_available():
            print("warning: the CUB-200 presets are meant for a CUDA GPU; on this CPU it will be very slow",
                  file=sys.stderr)
        history = train(cfg, resume=args.resume, force=args.force)
    except CLI_ERRORS as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if cfg is None:
            print("interrupted", file=sys.stderr)
        else:
            command = ["python", "-m", "bgtutorial.train", *(sys.argv[1:] if argv is None else argv)]
            print(interrupted_message(cfg.run_dir, command), file=sys.stderr)
        return 130
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
