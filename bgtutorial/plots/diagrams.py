"""Diagrams of the methods, drawn as boxes and arrows: BatchFormer's training and test paths (notebook 02)."""
from __future__ import annotations

import matplotlib.pyplot as plt

__all__ = ["two_stream_diagram"]


def _box(ax: plt.Axes, xy: tuple[float, float], text: str, color: str, width: float = 1.7, height: float = 0.7,
         dashed: bool = False) -> None:
    from matplotlib.patches import FancyBboxPatch

    x, y = xy
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05",
                                fc="white", ec=color, lw=1.6, ls="--" if dashed else "-"))
    ax.text(x, y, text, ha="center", va="center", fontsize=8, color="0.45" if dashed else "black")


def _arrow(ax: plt.Axes, start: tuple[float, float], end: tuple[float, float], color: str, head: bool = True) -> None:
    ax.annotate("", end, start, arrowprops=dict(arrowstyle="-|>" if head else "-", color=color, lw=1.4,
                                                shrinkA=0, shrinkB=0))


def two_stream_diagram(shared_head: bool = True) -> plt.Figure:
    """BatchFormer's training path (top) and test path (bottom), drawn as boxes and arrows.

    Training: the pooled features X (B, D) of a batch go two ways, untouched (the plain stream, blue)
    and through the module M (the module stream, orange); the loss sees both halves of the doubled
    batch. ``shared_head=True`` (the paper's design): one head h and one set of proxies for both
    streams. ``False`` (our ablation): the module stream has its own head h' and proxies P'. Test
    (bottom, green): one image at a time, no module; only h is used, so with ``shared_head=False``
    the module stream's head h' is left behind.
    """
    plain, module, test = "tab:blue", "tab:orange", "tab:green"
    fig, ax = plt.subplots(figsize=(10, 4.6))
    ax.set_xlim(-0.3, 12.6)
    ax.set_ylim(-0.2, 6.4)
    ax.axis("off")
    ax.text(-0.2, 6.2, "training (a batch of B images, labels y)", fontsize=9, weight="bold", va="top")
    ax.text(-0.2, 2.2, "test (one image at a time, no labels)", fontsize=9, weight="bold", va="top")
    ax.axhline(2.4, color="0.8", lw=0.8)
    # training: images -> backbone -> X, then two streams
    _box(ax, (0.8, 4.0), "B images", "0.3", width=1.3)
    _box(ax, (2.8, 4.0), "backbone\n(+ pooling)", "0.3")
    _arrow(ax, (1.45, 4.0), (1.95, 4.0), "0.3")
    ax.plot([3.65, 4.1], [4.0, 4.0], color="0.3", lw=1.4)
    ax.text(3.8, 4.12, "X (B, D)", fontsize=7, ha="right", va="bottom")
    ax.plot([4.1, 4.1, 4.6], [4.0, 5.0, 5.0], color=plain, lw=1.4)       # the plain stream
    ax.plot([4.1, 4.1], [4.0, 3.0], color=module, lw=1.4)                 # the module stream
    _box(ax, (5.7, 3.0), "BatchFormer M\n(attention over\nthe batch)", module, height=0.95)
    _arrow(ax, (4.1, 3.0), (4.85, 3.0), module)
    if shared_head:
        _box(ax, (8.4, 4.0), "shared head h\n(D → E, L2)", "0.2", height=0.8)
        ax.plot([4.6, 7.0], [5.0, 5.0], color=plain, lw=1.4)
        _arrow(ax, (7.0, 5.0), (7.8, 4.4), plain)
        ax.text(5.8, 5.08, "plain half: X, untouched", fontsize=7, color=plain, ha="center", va="bottom")
        ax.plot([6.55, 7.0], [3.0, 3.0], color=module, lw=1.4)
        _arrow(ax, (7.0, 3.0), (7.8, 3.6), module)
        ax.text(7.05, 2.85, "module half: M(X)", fontsize=7, color=module, ha="left", va="top")
        _box(ax, (11.2, 4.0), "one loss on 2B rows\nℓ(h([X; M(X)]), [y; y])\nproxies P", "0.2", width=2.5,
             height=1.05)
        _arrow(ax, (9.25, 4.0), (9.95, 4.0), "0.2")
    else:
        _box(ax, (8.4, 5.0), "head h\n(D → E, L2)", plain, height=0.8)
        _box(ax, (8.4, 3.0), "module head h'\n(D → E, L2)", module, height=0.8)
        _arrow(ax, (4.6, 5.0), (7.55, 5.0), plain)
        ax.text(5.8, 5.08, "plain half: X, untouched", fontsize=7, color=plain, ha="center", va="bottom")
        _arrow(ax, (6.55, 3.0), (7.55, 3.0), module)
        ax.text(7.05, 3.08, "M(X)", fontsize=7, color=module, ha="center", va="bottom")
        _box(ax, (11.2, 5.0), "ℓ(h(X), y)\nproxies P", plain, width=2.3, height=0.8)
        _box(ax, (11.2, 3.0), "ℓ'(h'(M(X)), y)\nown proxies P'", module, width=2.3, height=0.8)
        _arrow(ax, (9.25, 5.0), (10.05, 5.0), plain)
        _arrow(ax, (9.25, 3.0), (10.05, 3.0), module)
        ax.text(11.2, 4.0, "loss = ½ ℓ + ½ ℓ'", ha="center", va="center", fontsize=8)
    # test: image -> backbone -> h -> embedding; the module (and h') are not used
    y = 0.8
    _box(ax, (0.8, y), "1 image", "0.3", width=1.3)
    _box(ax, (2.8, y), "backbone\n(+ pooling)", test)
    _arrow(ax, (1.45, y), (1.95, y), test)
    _box(ax, (5.7, 1.6), "M: dropped at test", "0.6", width=1.9, height=0.45, dashed=True)
    _box(ax, (8.4, y), "head h\n(the trained one)", test, height=0.8)
    _arrow(ax, (3.65, y), (7.55, y), test)
    ax.text(5.7, y - 0.12, "x (1, D): never went through M", fontsize=7, color=test, ha="center", va="top")
    _box(ax, (11.2, y), "embedding (E)\n→ nearest neighbours", test, width=2.3)
    _arrow(ax, (9.25, y), (10.05, y), test)
    if not shared_head:
        ax.text(8.4, 0.05, "h' is left behind: it only ever saw M(X)", ha="center", fontsize=7, color=module)
    ax.set_title("BatchFormer, " + ("shared head (the paper's design)" if shared_head
                                     else "unshared head (our ablation)"), fontsize=10)
    fig.tight_layout()
    return fig
