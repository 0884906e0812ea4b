"""Block diagrams: the boxes they promise are there, labelled, inside the axes and not on top of each other."""
import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402

from bgtutorial.plots.diagrams import arrow, bgformer_block_diagram, box  # noqa: E402


def _boxes(fig):
    ax = fig.axes[0]
    return [p for p in ax.patches if isinstance(p, FancyBboxPatch)]


def _texts(fig):
    return [t.get_text() for t in fig.axes[0].texts]


def test_box_and_arrow_draw_a_labelled_box_and_a_labelled_arrow():
    fig, ax = plt.subplots()
    patch = box(ax, (1.0, 2.0), "LN", width=0.6, height=0.4)
    arrow(ax, (0.0, 2.0), (0.7, 2.0), label="(B, D)")
    assert patch in ax.patches and patch.get_gid() == "LN"
    assert (patch.get_x(), patch.get_width()) == (0.7, 0.6)
    assert {"LN", "(B, D)"} <= {t.get_text() for t in ax.texts}
    assert sum(isinstance(t, Annotation) for t in ax.texts) == 1      # the arrow itself
    plt.close(fig)


def test_bgformer_block_diagram_has_every_stage_with_its_shape():
    fig = bgformer_block_diagram()
    assert isinstance(fig, plt.Figure)
    labels = [p.get_gid() for p in _boxes(fig)]
    texts = " | ".join(_texts(fig))
    # the stages, in the block's order: LN, the two paths, their projections and weights, the fusion, LN, FFN
    for needle in ("X\n(B, D)", "LN", "visual path: SSA", "semantic path (label graph)", "labels y (B,)",
                   "P_v\n(D → D)", "P_s\n(D → D)", "× λ", "× (1−λ)", "+", "FFN\nD → 4D → D\nGELU",
                   "BGF(X, y)\n(B, D)", "training: [X; BGF(X, y)]\n(2B, D)", "shared head h\n(D → E, L2)"):
        assert any(needle in lab for lab in labels), f"no box labelled {needle!r}"
    assert labels.count("LN") == 2 and labels.count("+") == 2          # pre-norm: two LNs, two residual sums
    assert "top-K" in texts and "H heads of width D/H" in texts
    assert r"\tilde D^{-1/2}(Y+I)" in texts                          # the normalised label graph
    assert "(H, B, B)" in texts and "(B, B) graph" in texts
    assert "the block is skipped" in texts                            # test time: no labels, no block
    plt.close(fig)


def test_bgformer_block_diagram_prints_the_values_it_is_given():
    fig = bgformer_block_diagram(lam=0.5, k=8, heads=4)
    texts = " | ".join(_texts(fig)) + fig.axes[0].get_title()
    assert "λ=0.5" in texts and "(1−λ)=0.5" in texts and "K = 8" in texts and "H = 4" in texts
    plt.close(fig)


def test_bgformer_block_diagram_boxes_do_not_overlap_and_stay_inside():
    fig = bgformer_block_diagram()
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    rects = [(p.get_x(), p.get_y(), p.get_x() + p.get_width(), p.get_y() + p.get_height(), p.get_gid())
             for p in _boxes(fig)]
    for a, b in itertools.combinations(rects, 2):
        apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        assert apart, f"boxes {a[4]!r} and {b[4]!r} overlap"
    for r in rects:
        assert x0 <= r[0] and r[2] <= x1 and y0 <= r[1] and r[3] <= y1, f"box {r[4]!r} leaves the axes"
    plt.close(fig)
