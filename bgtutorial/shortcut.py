"""BGFormer's label-path shortcut, measured: training on images that carry no class information.

Notebook 04, section 4. BGFormer's semantic path mixes each sample with the samples of its own label
(docs/method.md, section 3), so the module half of the doubled batch can be pulled towards its class
even when the images are pure noise, while the plain half (the features used at test time) cannot.
:func:`label_shortcut_runs` trains that case, one run per λ, and keeps each half's loss per step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from .experiments import run_or_load
from .utils import bars_disabled

__all__ = ["label_shortcut_runs"]


def label_shortcut_runs(preset: str, runs_dir: str | Path, lams: Sequence[float] = (0.5, 1.0), seed: int = 0,
                        progress: bool = True, **overrides: Any) -> dict[float, dict[str, Any]]:
    """BGFormer trained on training images that are all pure noise, one run per λ: ``{λ: history}``.

    Every training image is replaced by noise (``corrupt=1.0, corrupt_kind="noise"``: seeded per
    image, the same in every epoch), so no network can learn anything about the classes from them; the test split stays clean. Train or
    load, in ``<runs>/<preset>-bgformer-purenoise-lam<λ>-seed<s>``. Each history's ``"steps"`` hold
    ``loss_plain`` and ``loss_module``, the loss of each half of the doubled batch: with the label
    path on (λ < 1) the module half can fall while the plain half does not (docs/method.md,
    section 3, "Training only, doubled batch, weighted loss"); λ = 1 removes the label path.
    ``overrides`` go to the config (e.g. ``loss``, ``plain_weight``, ``epochs``).
    """
    out = {}
    for lam in tqdm(lams, desc="pure-noise runs", disable=bars_disabled(progress)):
        kwargs = {**overrides.get("module_kwargs", {}), "lam": lam}
        extra = {k: v for k, v in overrides.items() if k != "module_kwargs"}
        folder = Path(runs_dir) / f"{preset}-bgformer-purenoise-lam{lam:g}-seed{seed}"
        out[lam] = run_or_load(preset, folder, seed=seed, batch_module="bgformer", corrupt=1.0, corrupt_kind="noise",
                               module_kwargs=kwargs, progress=False, **extra)
    return out
