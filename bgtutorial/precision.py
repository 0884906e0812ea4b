"""Mixed precision that fits the GPU at hand: bf16, fp16 with a gradient scaler, or float32.

* ``"auto"`` (the default): bf16 autocast on a CUDA GPU that computes it natively (compute
  capability 8.0 and above: A100, L4, H100, RTX 30xx/40xx), fp16 autocast with a gradient
  scaler below that (Colab's T4 is 7.5, the V100 7.0), float32 on the CPU.
* ``"bf16"``, ``"fp16"``, ``"fp32"`` force a choice; bf16 and fp16 also run on the CPU, which is
  how the tests exercise these code paths without a GPU.

The reference codes trained in fp16 with NVIDIA apex (Hyp-ViT: opt level O2, DyBGR: O1);
PyTorch's own autocast + GradScaler is today's equivalent of O1. bf16 needs no scaler: its
exponent range is float32's, so gradients do not underflow.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["PRECISIONS", "Precision", "resolve_precision"]

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_precision(name: str, dev: torch.device) -> str:
    """The concrete precision ("bf16", "fp16" or "fp32") that ``name`` means on ``dev``."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    if name != "auto":
        return name
    if dev.type != "cuda":
        return "fp32"
    major, _ = torch.cuda.get_device_capability(dev)
    return "bf16" if major >= 8 else "fp16"


@dataclass
class Precision:
    """Autocast context and gradient scaling for one run.

    ``with prec.autocast(): ...`` around the forward pass; then ``prec.backward(loss)``,
    ``prec.unscale(optimizer)`` before gradient clipping, ``prec.step(optimizer)``. With fp16 the
    scaler multiplies the loss so small gradients survive in half precision, and skips a step
    whose gradients overflowed (its state travels in the checkpoint).
    """

    name: str
    device: torch.device

    def __post_init__(self) -> None:
        self.name = resolve_precision(self.name, self.device)
        self.dtype = _DTYPES[self.name]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's autocast context (a no-op in float32)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (before clipping them)."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Optimiser step (skipped by the scaler when fp16 gradients overflowed); True if it stepped."""
        if not self.scaler.is_enabled():
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale      # the scale drops exactly when a step was skipped

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)
