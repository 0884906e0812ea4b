"""The methods drawn as boxes and arrows, with the tensor shapes between them.

Two generic helpers, :func:`box` and :func:`arrow`, in data coordinates of an axis with its frame
turned off, and the figures built from them: :func:`two_stream_diagram` (BatchFormer's training and
test paths, notebook 02) and :func:`bgformer_block_diagram` (one BGFormer block,
``bgtutorial.bgformer``; docs/method.md, section 3; notebook 04).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

__all__ = ["box", "arrow", "two_stream_diagram", "bgformer_block_diagram"]

#: colours of the two paths of a BGFormer block and of the training-only part
VISUAL, SEMANTIC, TRAINING, NEUTRAL = "tab:green", "tab:purple", "tab:orange", "0.3"


def box(ax: plt.Axes, xy: tuple[float, float], text: str, color: str = NEUTRAL, width: float = 1.7,
        height: float = 0.7, dashed: bool = False, fontsize: float = 8) -> FancyBboxPatch:
    """A rounded box centred at ``xy`` (data coordinates) with ``text`` in it; returns the patch.

    ``dashed=True`` draws a part that is not used (grey text, dashed frame). The text is a child of
    ``ax`` (``ax.texts``), so a test can find a box by its label; the patch carries the label as its
    ``gid``.
    """
    x, y = xy
    patch = FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05",
                           fc="white", ec=color, lw=1.6, ls="--" if dashed else "-", gid=text)
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color="0.45" if dashed else "black")
    return patch


def arrow(ax: plt.Axes, start: tuple[float, float], end: tuple[float, float], color: str = NEUTRAL,
          head: bool = True, label: str = "", label_side: str = "above") -> None:
    """A straight arrow (or, with ``head=False``, a line) from ``start`` to ``end``.

    ``label``: a small text at the middle of the segment, ``label_side`` "above", "below", "left" or
    "right" of it (the tensor that travels along the arrow, e.g. ``"(B, D)"``).
    """
    ax.annotate("", end, start, arrowprops=dict(arrowstyle="-|>" if head else "-", color=color, lw=1.4,
                                                shrinkA=0, shrinkB=0))
    if label:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        dx, dy, ha, va = {"above": (0, 0.08, "center", "bottom"), "below": (0, -0.08, "center", "top"),
                          "left": (-0.08, 0, "right", "center"), "right": (0.08, 0, "left", "center")}[label_side]
        ax.text(mx + dx, my + dy, label, fontsize=7, color=color, ha=ha, va=va)


def _line(ax: plt.Axes, xs: list[float], ys: list[float], color: str = NEUTRAL, ls: str = "-") -> None:
    ax.plot(xs, ys, color=color, lw=1.4, ls=ls, solid_capstyle="butt")


def _ffn_and_training(ax: plt.Axes, y0: float) -> None:
    """The block's second half (LN, FFN, residual, output) and the training-only row under it."""
    # second half: LN, FFN, residual, output
    box(ax, (11.05, y0), "LN", width=0.6, height=0.55)
    arrow(ax, (10.36, y0), (10.7, y0))
    box(ax, (12.55, y0), "FFN\nD → 4D → D\nGELU", width=1.55, height=0.95)
    arrow(ax, (11.4, y0), (11.72, y0))
    box(ax, (13.75, y0), "+", width=0.42, height=0.42, fontsize=10)
    arrow(ax, (13.38, y0), (13.49, y0))
    _line(ax, [10.53, 10.53, 13.75], [y0, 3.05, 3.05])              # second residual: around the FFN
    arrow(ax, (13.75, 3.05), (13.75, y0 - 0.27))
    box(ax, (14.7, y0), "BGF(X, y)\n(B, D)", width=1.05, height=0.75)
    arrow(ax, (14.01, y0), (14.12, y0))
    # training only: the doubled batch through one shared head
    _line(ax, [14.7, 14.7, 10.05], [y0 - 0.42, 1.75, 1.75], TRAINING)
    arrow(ax, (10.05, 1.75), (10.05, 1.22), TRAINING)
    box(ax, (10.05, 0.85), "training: [X; BGF(X, y)]\n(2B, D)", TRAINING, width=2.1, height=0.65)
    box(ax, (12.3, 0.85), "shared head h\n(D → E, L2)", TRAINING, width=1.45, height=0.65)
    arrow(ax, (11.15, 0.85), (11.52, 0.85), TRAINING)
    box(ax, (14.35, 0.85), "loss on [y; y]\n(plain half + module half)", TRAINING, width=1.85, height=0.65)
    arrow(ax, (13.08, 0.85), (13.38, 0.85), TRAINING)
    ax.text(12.2, 0.1, "test: no labels, the block is skipped; h embeds X alone", fontsize=7, ha="center",
            va="top", color="0.45")


def bgformer_block_diagram(lam: float | None = None, k: int | None = None, heads: int | None = None) -> plt.Figure:
    """One BGFormer block (pre-norm), with the shape of every tensor, and how training uses it.

    ``X`` (B, D): the pooled features of a batch of B samples. ``LN`` then two paths: the visual
    path, structure-constrained self-attention (H heads of width D/H, each query keeps its K
    largest scores ``QKᵀ/√(D/H)``, softmax over the kept ones), and the semantic path, the label
    graph ``Â = D̃^{-1/2}(Y+I)D̃^{-1/2}`` applied to ``X̂ W_s`` (the labels y enter here, and only
    here). Each path has its own projection (``P_v``, ``P_s``); λ mixes them; residual; ``LN``, an
    FFN of hidden width 4D with GELU; residual. The bottom row: in training the block's output is
    appended to the plain features and one shared head and loss see the 2B rows; at test time
    (no labels) the block is skipped. ``lam``, ``k``, ``heads``: numbers to print instead of the
    symbols λ, K, H.
    """
    lam_txt = "λ" if lam is None else f"λ={lam:g}"
    one_minus = "(1−λ)" if lam is None else f"(1−λ)={1 - lam:g}"
    k_txt = "K" if k is None else f"K = {k}"
    h_txt = "H" if heads is None else f"H = {heads}"
    fig, ax = plt.subplots(figsize=(13.5, 6.2))
    ax.set_xlim(-0.1, 15.6)
    ax.set_ylim(-0.35, 7.3)
    ax.axis("off")
    y0, yv, ys = 4.0, 5.55, 2.45                                   # main row, visual path, semantic path
    wx = 8.9                                                        # the λ weights' boxes
    # input, first LayerNorm, the split into two paths
    box(ax, (0.65, y0), "X\n(B, D)", width=1.0, height=0.75)
    box(ax, (2.1, y0), "LN", width=0.7, height=0.55)
    arrow(ax, (1.15, y0), (1.75, y0))
    _line(ax, [2.45, 3.2], [y0, y0])
    ax.text(2.82, y0 + 0.08, "X̂ (B, D)", fontsize=7, ha="center", va="bottom", color=NEUTRAL)
    _line(ax, [3.2, 3.2], [ys, yv])
    # visual path: SSA, its projection, weight λ
    arrow(ax, (3.2, yv), (3.45, yv), VISUAL)
    box(ax, (4.95, yv), f"visual path: SSA\nQ, K, V: {h_txt} heads of width D/H\n"
                        f"per head and query: top-{k_txt} of QKᵀ/√(D/H),\nsoftmax over the kept keys",
        VISUAL, width=2.9, height=1.15, fontsize=7.5)
    box(ax, (7.4, yv), "P_v\n(D → D)", VISUAL, width=1.0, height=0.7)
    arrow(ax, (6.45, yv), (6.85, yv), VISUAL, label="(B, D)")
    box(ax, (wx, yv), f"× {lam_txt}", VISUAL, width=1.3, height=0.5, fontsize=7.5)
    arrow(ax, (7.95, yv), (8.2, yv), VISUAL)
    ax.text(4.95, yv - 0.72, f"attention A: ({h_txt}, B, B), {k_txt} non-zero weights per row",
            fontsize=7, color=VISUAL, ha="center", va="top")
    # semantic path: labels -> label graph -> propagation, its projection, weight (1 - λ)
    arrow(ax, (3.2, ys), (3.45, ys), SEMANTIC)
    box(ax, (4.95, ys), "semantic path (label graph)\n" + r"$S = \hat A\,(\hat X W_s)$" + "\n"
                        + r"$\hat A = \tilde D^{-1/2}(Y+I)\,\tilde D^{-1/2}$",
        SEMANTIC, width=2.9, height=1.15, fontsize=7.5)
    box(ax, (4.95, 0.85), "labels y (B,)\n" + r"$Y_{ij} = [y_i = y_j]$", SEMANTIC, width=1.9, height=0.65)
    arrow(ax, (4.95, 1.2), (4.95, ys - 0.62), SEMANTIC, label="(B, B) graph", label_side="right")
    box(ax, (7.4, ys), "P_s\n(D → D)", SEMANTIC, width=1.0, height=0.7)
    arrow(ax, (6.45, ys), (6.85, ys), SEMANTIC, label="(B, D)")
    box(ax, (wx, ys), f"× {one_minus}", SEMANTIC, width=1.3, height=0.5, fontsize=7.5)
    arrow(ax, (7.95, ys), (8.2, ys), SEMANTIC)
    # fusion with the residual: X comes down from above, the two weighted paths from the left
    box(ax, (10.1, y0), "+", width=0.42, height=0.42, fontsize=10)
    arrow(ax, (wx + 0.7, yv), (9.93, y0 + 0.2), VISUAL)
    arrow(ax, (wx + 0.7, ys), (9.93, y0 - 0.2), SEMANTIC)
    _line(ax, [0.65, 0.65, 10.1], [y0 + 0.42, 6.75, 6.75])          # the residual: X around both paths
    arrow(ax, (10.1, 6.75), (10.1, y0 + 0.27))
    ax.text(5.4, 6.82, "residual: X + λ·P_v(visual) + (1 − λ)·P_s(semantic)", fontsize=7, ha="center",
            va="bottom", color=NEUTRAL)
    _ffn_and_training(ax, y0)
    ax.set_title(f"One BGFormer block (pre-norm): B samples of width D, {h_txt} heads, {k_txt} kept keys per "
                 f"query, {lam_txt} mixes the paths; blocks stack (depth)", fontsize=10)
    fig.tight_layout()
    return fig


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
    box(ax, (0.8, 4.0), "B images", "0.3", width=1.3)
    box(ax, (2.8, 4.0), "backbone\n(+ pooling)", "0.3")
    arrow(ax, (1.45, 4.0), (1.95, 4.0), "0.3")
    ax.plot([3.65, 4.1], [4.0, 4.0], color="0.3", lw=1.4)
    ax.text(3.8, 4.12, "X (B, D)", fontsize=7, ha="right", va="bottom")
    ax.plot([4.1, 4.1, 4.6], [4.0, 5.0, 5.0], color=plain, lw=1.4)       # the plain stream
    ax.plot([4.1, 4.1], [4.0, 3.0], color=module, lw=1.4)                 # the module stream
    box(ax, (5.7, 3.0), "BatchFormer M\n(attention over\nthe batch)", module, height=0.95)
    arrow(ax, (4.1, 3.0), (4.85, 3.0), module)
    if shared_head:
        box(ax, (8.4, 4.0), "shared head h\n(D → E, L2)", "0.2", height=0.8)
        ax.plot([4.6, 7.0], [5.0, 5.0], color=plain, lw=1.4)
        arrow(ax, (7.0, 5.0), (7.8, 4.4), plain)
        ax.text(5.8, 5.08, "plain half: X, untouched", fontsize=7, color=plain, ha="center", va="bottom")
        ax.plot([6.55, 7.0], [3.0, 3.0], color=module, lw=1.4)
        arrow(ax, (7.0, 3.0), (7.8, 3.6), module)
        ax.text(7.05, 2.85, "module half: M(X)", fontsize=7, color=module, ha="left", va="top")
        box(ax, (11.2, 4.0), "one loss on 2B rows\nℓ(h([X; M(X)]), [y; y])\nproxies P", "0.2", width=2.5,
             height=1.05)
        arrow(ax, (9.25, 4.0), (9.95, 4.0), "0.2")
    else:
        box(ax, (8.4, 5.0), "head h\n(D → E, L2)", plain, height=0.8)
        box(ax, (8.4, 3.0), "module head h'\n(D → E, L2)", module, height=0.8)
        arrow(ax, (4.6, 5.0), (7.55, 5.0), plain)
        ax.text(5.8, 5.08, "plain half: X, untouched", fontsize=7, color=plain, ha="center", va="bottom")
        arrow(ax, (6.55, 3.0), (7.55, 3.0), module)
        ax.text(7.05, 3.08, "M(X)", fontsize=7, color=module, ha="center", va="bottom")
        box(ax, (11.2, 5.0), "ℓ(h(X), y)\nproxies P", plain, width=2.3, height=0.8)
        box(ax, (11.2, 3.0), "ℓ'(h'(M(X)), y)\nown proxies P'", module, width=2.3, height=0.8)
        arrow(ax, (9.25, 5.0), (10.05, 5.0), plain)
        arrow(ax, (9.25, 3.0), (10.05, 3.0), module)
        ax.text(11.2, 4.0, "loss = ½ ℓ + ½ ℓ'", ha="center", va="center", fontsize=8)
    # test: image -> backbone -> h -> embedding; the module (and h') are not used
    y = 0.8
    box(ax, (0.8, y), "1 image", "0.3", width=1.3)
    box(ax, (2.8, y), "backbone\n(+ pooling)", test)
    arrow(ax, (1.45, y), (1.95, y), test)
    box(ax, (5.7, 1.6), "M: dropped at test", "0.6", width=1.9, height=0.45, dashed=True)
    box(ax, (8.4, y), "head h\n(the trained one)", test, height=0.8)
    arrow(ax, (3.65, y), (7.55, y), test)
    ax.text(5.7, y - 0.12, "x (1, D): never went through M", fontsize=7, color=test, ha="center", va="top")
    box(ax, (11.2, y), "embedding (E)\n→ nearest neighbours", test, width=2.3)
    arrow(ax, (9.25, y), (10.05, y), test)
    if not shared_head:
        ax.text(8.4, 0.05, "h' is left behind: it only ever saw M(X)", ha="center", fontsize=7, color=module)
    ax.set_title("BatchFormer, " + ("shared head (the paper's design)" if shared_head
                                     else "unshared head (our ablation)"), fontsize=10)
    fig.tight_layout()
    return fig
