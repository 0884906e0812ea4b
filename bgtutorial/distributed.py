"""Multi-process training helpers: ``torchrun --nproc_per_node N -m bgtutorial.train ...``.

* :func:`setup` reads torchrun's environment and starts the process group (NCCL on CUDA,
  gloo on CPU); a plain ``python -m bgtutorial.train`` stays single-process.
* :class:`GatherBatch` is the "global batch" option: features and labels from every rank are
  gathered (gradients flow back to each rank's own part through the autograd-aware
  ``all_gather``), so BatchFormer/BGFormer see the whole global batch and the loss is
  computed on it. The authors' code does not do this (their module sees the per-GPU batch,
  docs/method.md); without the option, so does ours.

Why the gradients come out right: every rank computes the same global loss L; the backward
of ``all_gather`` sums the gradient of each rank's copy of L with respect to rank j's
features (W·∂L/∂x_j), and DDP averages parameter gradients over the W ranks, which gives
∂L/∂θ, the single-process gradient on the concatenated batch.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["setup", "teardown", "world", "gather_with_grad", "gather_no_grad", "GatherBatch"]


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _env_int(name: str, default: int) -> int:
    """The integer in the environment variable ``name`` (torchrun sets it), or ``default`` when unset;
    ``ValueError`` naming the variable when it holds something else."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"the environment variable {name}={text!r} is not a non-negative integer: torchrun sets it "
                         f"for each process; unset it (unset {name}) for a single process, or launch with torchrun")
    return value


def setup() -> tuple[int, int, int]:
    """Start the process group when launched by torchrun; return (rank, world_size, local_rank)."""
    size = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)      # checked even when unused
    if size <= 1:
        return 0, 1, 0
    if rank >= size:
        raise ValueError(f"the environment variable RANK={rank} is not below WORLD_SIZE={size}: launch with torchrun, "
                         "or unset RANK and WORLD_SIZE for a single process")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), local


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from all ranks in rank order -> (W·B, ...), differentiable."""
    if world()[1] == 1:
        return x
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x))


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks in rank order (labels)."""
    _, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class GatherBatch:
    """Callable ``(features (B, D), labels (B,)) -> (global features (W·B, D), global labels)``."""

    def __call__(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gather_with_grad(features), gather_no_grad(labels)
