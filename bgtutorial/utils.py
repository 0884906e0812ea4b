"""Small helpers shared by the package and the notebooks: device choice, seeds, smoke mode."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["device", "seed_everything", "smoke_mode", "autocast_dtype", "bars_disabled"]


def device(prefer: str | None = None) -> torch.device:
    """The device to compute on: CUDA when present, else CPU (nothing assumes CUDA).

    ``prefer`` ("cpu", "cuda", "cuda:1") overrides the choice; asking for CUDA on a
    machine without it raises a clear error instead of failing later.
    """
    if prefer:
        dev = torch.device(prefer)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} was asked for but CUDA is not available here; use 'cpu'.")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(dev: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision="auto"`` on ``dev``: bf16 on CUDA GPUs of compute
    capability 8.0 and above, fp16 below, none (float32) on the CPU (:mod:`bgtutorial.precision`)."""
    from .precision import resolve_precision

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[resolve_precision("auto", dev)]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def smoke_mode() -> bool:
    """True when the environment variable ``BGT_SMOKE=1`` asks for tiny, fast runs (CI)."""
    return os.environ.get("BGT_SMOKE", "0").strip().lower() in {"1", "true", "yes", "on"}


def bars_disabled(progress: bool = True) -> bool:
    """True when progress bars should be hidden: ``progress=False`` or ``TQDM_DISABLE=1`` (CI)."""
    return not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes")
