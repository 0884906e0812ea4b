"""The batch module's own random stream: what makes a comparison between methods paired.

At a seed, the baseline and a run with a batch module must draw the same head, proxies, data order,
augmentations and perturbations; only the module's own weights (and its dropout masks) may differ.
A module built from torch's global generator consumes draws that the head and the proxies built after
it then miss, so each method would start from another head, and the per-seed difference between two
methods would carry the head's luck as well as the module's effect.

:class:`OwnStream` keeps a generator state that belongs to the module alone, seeded from the run's
seed (:func:`module_seed`). The network builds the module inside it and runs the module's training
forward (its dropout) inside it; the global stream is left exactly where it was, as if there were no
module. The proof is in a run's history: at a seed, the epoch-0 metrics (the module is off at
evaluation) are the same for every method.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["module_seed", "OwnStream"]


def module_seed(seed: int) -> int:
    """The batch module's seed, derived from a run's seed: NumPy's ``SeedSequence((seed, 0x6D6F64))``
    (the tag spells "mod"), 63 bits. Distinct from the run's seed, so the module's first draws are not
    the head's first draws."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"a module seed is derived from a non-negative integer seed, got {seed!r}")
    hi, lo = np.random.SeedSequence([int(seed), 0x6D6F64]).generate_state(2, np.uint32)
    return (int(hi) << 32 | int(lo)) >> 1


class OwnStream:
    """A random stream of its own: ``with stream.active(device):`` runs its body on this stream's state
    (CPU, and the CUDA device given) and restores the global generators afterwards, keeping the state
    the body left for the next time.

    Args:
        seed: the stream's seed (e.g. :func:`module_seed` of the run's seed).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.cpu = torch.Generator().manual_seed(self.seed).get_state()
        self.cuda: dict[int, torch.Tensor] = {}      # CUDA device index -> state, seeded on first use

    @contextlib.contextmanager
    def active(self, device: torch.device | str | None = None) -> Iterator[None]:
        dev = torch.device("cpu" if device is None else device)
        idx = None
        if dev.type == "cuda":
            idx = dev.index if dev.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[] if idx is None else [idx]):
            torch.set_rng_state(self.cpu)
            if idx is not None:
                if idx in self.cuda:
                    torch.cuda.set_rng_state(self.cuda[idx], idx)
                else:
                    with torch.cuda.device(idx):
                        torch.cuda.manual_seed(self.seed)
            try:
                yield
            finally:
                self.cpu = torch.get_rng_state()
                if idx is not None:
                    self.cuda[idx] = torch.cuda.get_rng_state(idx)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores, so a resumed run draws the module's next dropout masks as an
        uninterrupted one would."""
        return {"seed": self.seed, "cpu": self.cpu.clone(), "cuda": {k: v.clone() for k, v in self.cuda.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.cpu = state["cpu"].detach().cpu().clone()         # a checkpoint may be mapped onto a GPU
        self.cuda = {int(k): v.detach().cpu().clone() for k, v in state.get("cuda", {}).items()}
