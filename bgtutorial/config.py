"""The run's configuration: :class:`Config` (every knob of a run), the presets and :func:`load_config`.

* Presets live in ``bgtutorial/configs/*.toml`` (with their sources); a preset name may end
  in ``-batchformer`` or ``-bgformer`` to add that batch module, and a preset file may hold a
  table per batch module (``[bgformer]``) whose fields apply only with that module.
* :meth:`Config.validate` refuses a config that cannot run, with the fix in the message: known
  names here, types and bounds with their reasons in :mod:`bgtutorial.config_checks`.
* The command line (:mod:`bgtutorial.cli`) turns every field into an option (``--epochs 3``).
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .config_checks import check_bounds, check_preset_values, check_types
from .losses import CLASSIFICATION_LOSSES, LOSSES
from .models import BACKBONES, BATCH_MODULES, HEAD_INITS, POOLINGS
from .precision import PRECISIONS
from .utils import device

__all__ = ["Config", "load_config", "PRESETS", "DATASETS", "MODULES", "SAMPLERS"]

PRESETS = ("glyphs", "glyphs-quick", "glyphs-scratch", "glyphs-lt", "digits", "smoke", "cub-resnet50", "cub-vits")
DATASETS = ("glyphs", "digits", "fake-cub", "cub", "glyphs-lt")
MODULES = tuple(BATCH_MODULES)         # "none", "batchformer", "bgformer": listed once, in models.py
SAMPLERS = ("m_per_class", "random")
CORRUPT_KINDS = ("mixed", "occlude", "noise")   # Config.corrupt_kind: "mixed" or one of data.perturb.CORRUPTIONS
MODULE_LOSSES = ("auto", "one", "separate")    # Config.module_loss: "auto" is "separate" exactly without a shared head


@dataclass
class Config:
    """Every knob of a run. Presets set some fields; the CLI can override any of them."""
    preset: str = "glyphs"
    dataset: str = "glyphs"            # glyphs | digits | fake-cub | cub | glyphs-lt (closed-set recognition)
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
    loss: str = "proxy_anchor"         # metric learning; cross_entropy | balanced_softmax for glyphs-lt
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
    glyph_per_class: int = 60          # glyphs only: images per class (CUB-200 has about 59); glyphs-lt: n_max
    glyph_test_per_class: int = 20     # glyphs-lt only: test images per class (balanced, other render seeds)
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
    module_loss: str = "auto"          # the module half's loss: auto (its own when the head is its own), one, separate
    # Corrupted training images (robustness study): a fixed share of the TRAINING images (the test
    # split and the validation classes stay clean) is corrupted, each either occluded (a random
    # square patch, 40-70 % of the side, so 16-49 % of the area, replaced by uniform noise) or
    # replaced entirely by noise, half and half by a seeded draw. Which images, which kind, where
    # the patch sits and the noise itself are a pure function of (data_seed, index): the same
    # images are corrupted in every epoch, for every method and every training seed, like
    # photographs that are bad in the data set. Applied after the augmentation; the noise spans
    # each channel's own range in that image (:mod:`bgtutorial.data.perturb`: corrupt_plan, corrupt_image).
    corrupt: float = 0.0               # share p in [0, 1] of training images corrupted (0: none)
    corrupt_kind: str = "mixed"        # mixed: the seeded coin above; noise / occlude: every corrupted image that kind

    def validate(self) -> "Config":
        """Raise ``ValueError`` with the fix for a config that cannot run (types and bounds:
        :mod:`bgtutorial.config_checks`)."""
        check_types(dataclasses.asdict(self), Config)
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.batch_module not in MODULES:
            raise ValueError(f"unknown batch_module {self.batch_module!r}; choose one of {', '.join(MODULES)}")
        if self.loss not in LOSSES + CLASSIFICATION_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES + CLASSIFICATION_LOSSES)}")
        _check_task(self)
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
        if self.sampler == "random" and self.batch_module != "none" and not self.classification:
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
        if self.module_loss not in MODULE_LOSSES:
            raise ValueError(f"module_loss must be one of {', '.join(MODULE_LOSSES)}, got {self.module_loss!r}: auto "
                             "(a loss of its own when shared_head=false), one (one loss over the doubled batch) or "
                             "separate (the module half's own loss and proxies)")
        if self.corrupt_kind not in CORRUPT_KINDS:
            raise ValueError(f"corrupt_kind must be one of {', '.join(CORRUPT_KINDS)}, got {self.corrupt_kind!r} "
                             "(mixed: each corrupted image occluded or pure noise by a seeded coin)")
        check_bounds(self)
        return self

    @property
    def separate_module_loss(self) -> bool:
        """Whether the module half gets a loss (and proxies) of its own: ``module_loss`` "separate", or
        "auto" with an unshared head (the ablation of BatchFormer's claim b); "one" keeps one loss over the
        doubled batch even with an unshared head, which separates the head from the form of the loss."""
        return self.module_loss == "separate" or (self.module_loss == "auto" and not self.shared_head)

    @property
    def classification(self) -> bool:
        """Closed-set recognition (``glyphs-lt`` with a classification loss), not metric learning."""
        return self.loss in CLASSIFICATION_LOSSES

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.preset}-seed{self.seed}")


def _check_task(cfg: Config) -> None:
    """Recognition and retrieval do not mix: the classification losses go with ``glyphs-lt`` and back."""
    if cfg.classification != (cfg.dataset == "glyphs-lt"):
        raise ValueError(f"loss={cfg.loss!r} with dataset={cfg.dataset!r}: the classification losses "
                         f"({', '.join(CLASSIFICATION_LOSSES)}) go with dataset 'glyphs-lt' (closed-set recognition) "
                         "and the metric losses with the retrieval datasets; "
                         + ("pass --loss cross_entropy or balanced_softmax" if cfg.dataset == "glyphs-lt"
                            else "for recognition use --preset glyphs-lt"))
    if cfg.classification and cfg.val_classes:
        raise ValueError("val_classes holds out classes for retrieval; glyphs-lt is closed-set recognition, "
                         "where every class trains: pass --val_classes 0")
    if not 1 <= cfg.glyph_test_per_class <= 1000:
        raise ValueError(f"glyph_test_per_class must be in [1, 1000] (every image is rendered and kept in memory), "
                         f"got {cfg.glyph_test_per_class}; pass e.g. --glyph_test_per_class 20")


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
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"preset file {path} is not valid TOML ({err}); fix that line") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"preset file {path} is not UTF-8 text (byte {err.start}); a preset is a TOML file: "
                         "restore it (reinstall bgtutorial)") from None
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

