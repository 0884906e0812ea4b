"""The config's datasets: (train, validation, test) in the zero-shot retrieval protocol.

:func:`build_splits` builds the data set a :class:`~bgtutorial.config.Config` names (glyphs,
digits, the synthetic or the real CUB-200-2011) with its transforms, holds out validation
classes, and applies the perturbations of :mod:`bgtutorial.data.perturb` that the config asks for.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from ..models import input_stats
from .cub import CUB200, eval_transform, train_transform
from .cub_archive import download_cub
from .digits import DigitsRetrieval
from .fake_cub import fake_cub_url, make_fake_cub
from .glyphs import GlyphsRetrieval
from .glyphs_lt import GlyphsRecognition
from .perturb import ClassSubset, CorruptedImages, NoisyLabels, flip_labels, long_tailed

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["build_splits", "build_datasets"]


def build_splits(cfg: Config) -> tuple[Dataset, Dataset | None, Dataset]:
    """(train, validation or None, test) datasets of the config, in the zero-shot retrieval protocol.

    With ``cfg.val_classes = n`` the n highest-numbered training classes become validation
    classes (evaluation transform, never trained on), following Musgrave et al.'s advice to select
    checkpoints and hyper-parameters on classes that are neither trained on nor tested; the
    remaining training labels stay 0..C-n-1, so the proxies need no relabelling.
    With ``cfg.imbalance = rho > 1`` the (remaining) training classes are then cut to a long-tailed
    profile (:func:`long_tailed`, seeded by ``data_seed``); validation and test classes stay whole.
    Label noise (``label_noise``) comes last, on the images that are kept.
    ``dataset="glyphs-lt"`` is closed-set recognition instead: the same classes in both splits, the
    test split balanced and rendered from other seeds (:class:`~bgtutorial.data.glyphs_lt.GlyphsRecognition`).
    """
    if cfg.dataset in ("glyphs", "digits", "glyphs-lt"):
        from torchvision import transforms as T
        aug = T.RandomCrop(cfg.image_size, padding=2, padding_mode="edge")
        if cfg.dataset == "glyphs-lt":     # closed set: every class in both splits
            make = lambda split, transform=None: GlyphsRecognition(  # noqa: E731
                split, per_class=cfg.glyph_per_class, seed=cfg.data_seed, canvas=cfg.image_size, transform=transform,
                num_classes=cfg.glyph_classes or None, root=cfg.data_root, progress=cfg.progress,
                test_per_class=cfg.glyph_test_per_class)
        elif cfg.dataset == "glyphs":    # rendered once into <data_root>/glyphs-<hash>/, then loaded from there
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
        train = CorruptedImages(train, cfg.corrupt, cfg.data_seed, cfg.corrupt_kind)
    if cfg.label_noise > 0:
        train = NoisyLabels(train, flip_labels(train.targets, cfg.label_noise, cfg.seed))
    return train, val, test


def build_datasets(cfg: Config) -> tuple[Dataset, Dataset]:
    """(train, test) datasets of the config (see :func:`build_splits` for the validation classes)."""
    train, _, test = build_splits(cfg)
    return train, test
