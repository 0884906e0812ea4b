"""Small helpers shared by the package and the notebooks: device choice, seeds, smoke mode."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["device", "seed_everything", "smoke_mode", "autocast_dtype", "bars_disabled", "UserError", "CLI_ERRORS",
           "about", "check_gpu_memory"]


class UserError(Exception):
    """An error caused by an input (file, folder, option), whose one-line message says what to do.

    The command-line entry points print such messages (and those of :data:`CLI_ERRORS`) without a
    traceback and exit with code 2.
    """


#: the exceptions the CLIs turn into ``error: <message>`` on stderr and exit code 2
CLI_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError, PermissionError,
                                               FloatingPointError)


def device(prefer: str | None = None) -> torch.device:
    """The device to compute on: CUDA when present, else CPU (nothing assumes CUDA).

    ``prefer`` ("cpu", "cuda", "cuda:1", "mps") overrides the choice; a device that is not
    there (no CUDA, ``cuda:3`` on a one-GPU machine, a misspelt name) raises ``ValueError``
    with the devices to choose from, instead of failing later.
    """
    if not prefer:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    choices = "'cpu'" + (f", 'cuda' or 'cuda:0' to 'cuda:{n_cuda - 1}'" if n_cuda else "")
    try:
        dev = torch.device(prefer)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {prefer!r}; choose {choices}") from err
    if dev.type == "cuda" and (n_cuda == 0 or (dev.index or 0) >= n_cuda):
        have = f"{n_cuda} CUDA device(s)" if n_cuda else "no CUDA device"
        raise ValueError(f"device {prefer!r} does not exist: this machine has {have}; choose {choices}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {prefer!r} (Apple MPS) is not available here; choose {choices}")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {prefer!r} cannot train a model here; choose {choices}")
    return dev


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


def about(dev: torch.device | None = None) -> str:
    """One line naming what a notebook ran on: package and torch versions, device, threads, date.

    The notebooks print it first, so a committed output says where its numbers come from.
    """
    import datetime
    import platform

    from . import __version__

    dev = dev or device()
    where = (f"{torch.cuda.get_device_name(dev)}" if dev.type == "cuda"
             else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")
    return (f"bgtutorial {__version__} · torch {torch.__version__} · {dev.type}: {where} · "
            f"{datetime.date.today().isoformat()}")


def check_gpu_memory(required_gib: float, what: str, total_gib: float | None = None, hint: str = "",
                     device_index: int = 0) -> bool:
    """True when the GPU has at least ``required_gib`` GiB of memory for ``what``; else print why not and
    what to change, and return False.

    ``total_gib``: the card's memory; ``None`` reads it from ``torch.cuda.get_device_properties``
    (no CUDA device: False). The message names the three knobs: a smaller ``batch_size``, a 16-bit
    ``precision``, or skipping the run (``RUN_TIER2=False`` in notebook 05); ``hint`` is appended
    (e.g. the largest batch that fits by :func:`bgtutorial.gpucheck.estimate_train_gib`).
    """
    if required_gib <= 0:
        raise ValueError(f"required_gib must be > 0, got {required_gib}")
    name = "the GPU"
    if total_gib is None:
        if not torch.cuda.is_available():
            print(f"{what} needs a CUDA GPU with about {required_gib:.1f} GiB of memory, and there is none here: "
                  "skipped (set RUN_TIER2=False to skip it without this message)." + (f" {hint}" if hint else ""))
            return False
        props = torch.cuda.get_device_properties(device_index)
        total_gib, name = props.total_memory / 2**30, props.name
    if total_gib >= required_gib:
        print(f"{what}: needs about {required_gib:.1f} GiB, {name} has {total_gib:.1f} GiB: it fits.")
        return True
    print(f"{what} needs about {required_gib:.1f} GiB of GPU memory, {name} has {total_gib:.1f} GiB: not started. "
          "Lower batch_size (in multiples of m; keep steps_per_epoch x batch_size about the same), use "
          "precision='bf16' or 'fp16' if it is fp32, or set RUN_TIER2=False to skip it." + (f" {hint}" if hint else ""))
    return False
