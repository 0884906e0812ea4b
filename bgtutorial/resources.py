"""Memory a run will ask for, computed from its config and checked before anything is allocated.

A config can ask for more memory than any machine has: 1,000 glyph images per class at 128 px
(10 GB of pixels), an evaluation batch of 100,000 images, digits rendered 5,000 times each, a
1024 px canvas. Without a check these fail minutes later with a ``MemoryError`` traceback. Here
each such block is sized from the config alone and compared with one documented limit,
:data:`MAX_BYTES` (8 GiB, or ``BGT_MAX_GIB`` from the environment on a larger machine); a block
over it raises a one-line ``ValueError`` with the figure, the option at fault and what to pass
instead. The CLIs turn that into ``error: ...`` and exit code 2, before a run folder is written.

* :func:`check_allocation`: one block of memory against the limit (reusable: the glyph backbone's
  pretraining checks its image set with it).
* :func:`config_blocks` / :func:`check_resources`: the blocks of a training config: the images a
  generated dataset keeps in memory and the activations of one evaluation batch.

Training batches are not a block: the samplers build each batch when it is drawn
(:mod:`bgtutorial.data.sampler`), so ``steps_per_epoch`` costs time, not memory.
"""
from __future__ import annotations

import os
from typing import Any

__all__ = ["MAX_BYTES", "GLYPH_CLASSES", "DIGIT_IMAGES", "max_bytes", "check_allocation", "config_blocks",
           "check_resources", "eval_floats_per_pixel"]

#: the limit on one block of memory a run asks for (images held in memory, an evaluation batch's
#: activations): 8 GiB, a third of a 24 GB machine, so that the rest of the run and the system fit
MAX_BYTES = 8 * 2**30
#: the glyph classes the look-alike rule keeps (``glyph_classes = 0``: all of them; a test pins it)
GLYPH_CLASSES = 204
#: scikit-learn's handwritten digits (``load_digits``): 1,797 images, each rendered ``views`` times
DIGIT_IMAGES = 1797
#: first-block channels of each backbone and the stride before them: the widest activation of an
#: evaluation forward pass, per input pixel (smallcnn: 32 channels at full size; ResNet-50: 64 at
#: 1/2; ViT-S/16: 384 per 16 x 16 patch)
_FIRST_BLOCK = {"smallcnn": (32, 1), "resnet50": (64, 2), "vit_s16": (384, 16)}


def max_bytes() -> int:
    """:data:`MAX_BYTES`, or ``BGT_MAX_GIB`` GiB when that environment variable holds a positive number."""
    raw = os.environ.get("BGT_MAX_GIB", "").strip()
    if not raw:
        return MAX_BYTES
    try:
        gib = float(raw)
    except ValueError:
        raise ValueError(f"BGT_MAX_GIB={raw!r} must be a number of GiB, e.g. BGT_MAX_GIB=32") from None
    if not 0 < gib < 2**40:
        raise ValueError(f"BGT_MAX_GIB={raw!r} must be a positive number of GiB, e.g. BGT_MAX_GIB=32")
    return int(gib * 2**30)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def check_allocation(what: str, nbytes: float, fix: str) -> None:
    """Raise a one-line ``ValueError`` when ``what`` needs more than :func:`max_bytes`.

    ``what``: the block and how it was sized ("the glyph images (204 classes x 1,000 x 3 x 128 x 128
    bytes)"); ``fix``: what to pass instead ("pass e.g. --glyph_per_class 60").
    """
    limit = max_bytes()
    if nbytes > limit:
        raise ValueError(f"{what} would take {_gib(nbytes)}, over the {_gib(limit)} limit on one block of memory "
                         f"(bgtutorial.resources.MAX_BYTES; BGT_MAX_GIB raises it on a larger machine): {fix}")


def eval_floats_per_pixel(backbone: str) -> float:
    """Floats an evaluation forward pass holds at once per input pixel: the input's 3 channels plus
    the first block's output and its normalised copy (2 x channels / stride²)."""
    channels, stride = _FIRST_BLOCK.get(backbone, (64, 2))
    return 3 + 2 * channels / stride ** 2


def config_blocks(cfg: Any) -> list[tuple[str, float, str]]:
    """``(what, bytes, fix)`` for each block of memory the config asks for before training."""
    s = cfg.image_size
    blocks = []
    if cfg.dataset == "glyphs":
        classes = cfg.glyph_classes or GLYPH_CLASSES
        blocks.append((f"the glyph images ({classes} classes x {cfg.glyph_per_class:,} images x 3 x {s} x {s} bytes, "
                       "both splits)", classes * cfg.glyph_per_class * 3 * s * s,
                       "pass a smaller --glyph_per_class (default 60), --glyph_classes or --image_size (default 32)"))
    if cfg.dataset == "digits":
        blocks.append((f"the digit images ({DIGIT_IMAGES:,} digits x {cfg.views:,} views x 3 x {s} x {s} float32)",
                       DIGIT_IMAGES * cfg.views * 3 * s * s * 4,
                       "pass a smaller --views (default 4) or --image_size (default 32)"))
    per_pixel = eval_floats_per_pixel(cfg.backbone)
    blocks.append((f"one evaluation batch ({cfg.eval_batch_size:,} images x {s} x {s} px x {per_pixel:g} float32 "
                   f"activations per pixel in {cfg.backbone}'s first block)", cfg.eval_batch_size * s * s * per_pixel * 4,
                   "pass a smaller --eval_batch_size (default 256; it changes no result) or --image_size"))
    return blocks


def check_resources(cfg: Any) -> None:
    """Raise a one-line ``ValueError`` for the first block of :func:`config_blocks` over the limit."""
    for what, nbytes, fix in config_blocks(cfg):
        check_allocation(what, nbytes, fix)
