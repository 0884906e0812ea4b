"""Hyp-ViT's Poincaré ball: the exponential map, the clipping radius and geodesic distances (notebook 05)."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["poincare_figure"]


def poincare_figure(c: float = 0.1, clip_r: float | None = 2.3, n: int = 400, spread: float = 2.0,
                    anchor: Sequence[float] = (1.2, 0.6), seed: int = 0) -> plt.Figure:
    """Hyp-ViT's map into the Poincaré ball, in two panels (docs/method.md, Hyp-ViT).

    Left: the norm of ``exp_0(v)`` against ``|v|`` (it saturates at the ball's radius 1/√c) and its
    slope ``sech²(√c|v|)``, which vanishes, with the clip radius ``clip_r``. Right: the ball of
    curvature -c (radius 1/√c); ``n`` Gaussian 2-D vectors (std ``spread``) mapped without clipping
    (grey) and with clipping (blue, inside the dashed image of the clip radius); contours of the
    geodesic distance from ``anchor`` (a Euclidean vector, mapped the same way, star).
    """
    from ..losses import poincare_distance, to_poincare

    sc = c ** 0.5
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.3))
    r = np.linspace(0, 4 / sc, 400)
    ax1.plot(r, np.tanh(sc * r) / sc, color="tab:blue", label=r"$|\exp_0(v)|$ (left axis)")
    ax1.axhline(1 / sc, color="black", lw=0.8, ls=":", label=r"ball radius $1/\sqrt{c}$")
    ax1.set_xlabel(r"Euclidean norm $|v|$ of the head's output")
    ax1.set_ylabel("norm in the ball")
    slope = ax1.twinx()
    slope.plot(r, 1 / np.cosh(sc * r) ** 2, color="tab:red", ls="--", label=r"slope $\mathrm{sech}^2(\sqrt{c}|v|)$")
    slope.set_ylabel("slope (right axis)", color="tab:red")
    slope.set_ylim(0, 1.05)
    if clip_r is not None:
        ax1.axvline(clip_r, color="tab:green", lw=1.5, label=f"clip radius r={clip_r:g}")
    lines = ax1.get_legend_handles_labels()[0] + slope.get_legend_handles_labels()[0]
    ax1.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="center right")
    ax1.set_title(f"the exponential map saturates (c={c:g})", fontsize=9)

    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 2, generator=g, dtype=torch.float64) * spread                    # (n, 2)
    free = to_poincare(v, c, None)                                                       # (n, 2)
    clipped = to_poincare(v, c, clip_r)                                                  # (n, 2)
    a = to_poincare(torch.tensor([list(anchor)], dtype=torch.float64), c, clip_r)        # (1, 2)
    lim = 1.05 / sc
    xs = np.linspace(-lim, lim, 240)
    gx, gy = np.meshgrid(xs, xs)
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1))                           # (G, 2)
    inside = (grid.pow(2).sum(1) < (0.999 / sc) ** 2)
    d = torch.full((grid.shape[0],), float("nan"), dtype=torch.float64)
    d[inside] = poincare_distance(a, grid[inside], c)[0]
    cs = ax2.contour(gx, gy, d.reshape(gx.shape).numpy(), levels=np.arange(1, 9, 1.0), cmap="viridis",
                     linewidths=0.8)
    ax2.clabel(cs, fontsize=6, fmt="%g")
    ax2.add_patch(plt.Circle((0, 0), 1 / sc, fill=False, color="black", lw=1.2))
    ax2.scatter(free[:, 0], free[:, 1], s=5, color="0.6", label="exp map, no clipping")
    ax2.scatter(clipped[:, 0], clipped[:, 1], s=5, color="tab:blue", label=f"clipped to |v|≤{clip_r:g}, then exp map")
    if clip_r is not None:
        ax2.add_patch(plt.Circle((0, 0), np.tanh(sc * clip_r) / sc, fill=False, ls="--", color="tab:green",
                                 lw=1.2, label="image of the clip radius"))
    ax2.scatter(a[:, 0], a[:, 1], marker="*", s=140, color="tab:red", zorder=4, label="anchor point")
    ax2.set_xlim(-lim, lim), ax2.set_ylim(-lim, lim)
    ax2.set_aspect("equal")
    ax2.set_xticks([]), ax2.set_yticks([])
    ax2.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.0, 0.0))
    ax2.set_title(f"Poincaré ball, c={c:g} (radius {1 / sc:.2f})\ncontours: geodesic distance $d_c$ to the star",
                  fontsize=9)
    fig.tight_layout()
    return fig
