"""Figures: they draw what their docstrings say (panels, order, class boundaries) and name the classes
(the glyphs' characters, CUB's species, or the label number)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bgtutorial.bgformer import BGFormer  # noqa: E402
from bgtutorial.graph import visual_graph  # noqa: E402
from bgtutorial.plots.attention import head_graphs  # noqa: E402
from bgtutorial.plots.curves import compare_histories  # noqa: E402
from bgtutorial.plots.images import class_name  # noqa: E402
from bgtutorial.plots.retrieval import embedding_projection, retrieval_gallery  # noqa: E402


def test_head_graphs_panels_order_and_boundaries():
    torch.manual_seed(0)
    y = torch.tensor([2, 0, 1, 0, 2, 1, 0, 1, 2, 1])                  # classes of sizes 3, 4, 3, shuffled
    x = torch.randn(3, 16)[y] * 2 + torch.randn(10, 16)
    m = BGFormer(16, num_heads=4, k=3).eval()
    with torch.no_grad():
        _, maps = m(x, y, return_attention=True)
    knn = visual_graph(m.blocks[0].norm(x).detach(), 3)
    fig = head_graphs(maps[0], knn, y, max_heads=2)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 3                                             # kNN + 2 heads (+ a colourbar)
    assert panels[0].get_title().startswith("feature kNN, k=3")
    assert panels[1].get_title().startswith("head 0: top-3")
    assert "same-class edges" in panels[2].get_title()
    order = torch.argsort(y, stable=True)
    shown = panels[0].images[0].get_array()
    assert (shown == knn[order][:, order].float().numpy()).all()      # rows and columns sorted by class
    head0 = panels[1].images[0].get_array()
    assert (head0.mask == (maps[0][0][order][:, order] == 0).numpy()).all()   # non-edges left blank
    boundaries = sorted({line.get_xdata()[0] for line in panels[0].lines if line.get_xdata()[0] == line.get_xdata()[1]})
    assert boundaries == pytest.approx([2.5, 6.5])                      # between classes 0|1 and 1|2
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["0", "1", "2"]
    assert panels[0].get_ylabel().startswith("query") and panels[1].get_xlabel().startswith("key")
    plt.close(fig)
    fig = head_graphs(maps[0], knn, y, max_heads=1, names=["alpha", "beta", "gamma"])   # class names on the axes
    panels = [ax for ax in fig.axes if ax.get_title()]
    for ax in panels:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["alpha", "beta", "gamma"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["alpha", "beta", "gamma"]
    plt.close(fig)


class _Named:
    def __init__(self, classes, n_per_class=3):
        self.classes = classes
        self.targets = [c for c in range(len(classes)) for _ in range(n_per_class)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.full((3, 8, 8), self.targets[i] / len(self.classes)), self.targets[i]


def test_class_name_reads_the_dataset():
    assert class_name(_Named(["Ж", "ա"]), 1) == "ա"
    assert class_name(_Named(["002.Laysan_Albatross"]), 0) == "Laysan Albatross"
    assert class_name(_Named(["100.Brown_Pelican_with_a_long_name"]), 0, width=10) == "Brown Pel…"
    assert class_name(object(), 7) == "7"


def test_gallery_titles_and_projection_labels_are_the_class_names():
    ds = _Named(["Ж", "ա", "ß"])
    labels = torch.tensor(ds.targets)
    emb = torch.nn.functional.normalize(torch.randn(len(ds), 4, generator=torch.Generator().manual_seed(0)), dim=1)
    fig = retrieval_gallery(ds, emb, labels, queries=[0], k=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "query Ж" and all(t.split()[0] in "✓✗" and t.split()[1] in ds.classes for t in titles[1:])
    fig = embedding_projection(emb, labels, names=ds.classes)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["Ж", "ա", "ß"]
    many = _Named([chr(0x410 + i) for i in range(12)], n_per_class=2)
    emb = torch.randn(len(many), 4, generator=torch.Generator().manual_seed(1))
    fig = embedding_projection(emb, torch.tensor(many.targets), names=many.classes)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(many.classes)


def _hist_r1(r1):
    return {"epochs": [{"epoch": 1, "R@1": r1}]}


def test_robustness_curves_draw_mean_and_std_per_method():
    from bgtutorial.plots.studies import robustness_curves

    study = {0.0: {"baseline": [_hist_r1(0.5), _hist_r1(0.7)], "bgformer": [_hist_r1(0.6), _hist_r1(0.6)]},
             0.4: {"baseline": [_hist_r1(0.2), _hist_r1(0.4)], "bgformer": [_hist_r1(0.5), _hist_r1(0.3)]}}
    fig = robustness_curves(study, xlabel="share of training images corrupted")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "share of training images corrupted" and "R@1" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["baseline (2 seeds)", "bgformer (2 seeds)"]
    base = ax.containers[0]                                           # ErrorbarContainer of the first method
    line, _, (bars,) = base
    assert list(line.get_ydata()) == pytest.approx([0.6, 0.3])       # means over seeds
    segments = bars.get_segments()
    half = [(s[1][1] - s[0][1]) / 2 for s in segments]
    assert half == pytest.approx([0.1414213, 0.1414213], rel=1e-5)   # sample std of (0.5, 0.7) and (0.2, 0.4)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.4"]
    plt.close(fig)


def test_attention_heatmap_sorts_by_class_and_draws_boundaries():
    from bgtutorial.plots.attention import attention_heatmap

    y = torch.tensor([1, 0, 1, 0, 2])
    w = torch.arange(25.0).reshape(5, 5)
    fig = attention_heatmap(w, y, names=["Ж", "ա", "ß"])
    ax = fig.axes[0]
    order = torch.argsort(y, stable=True)
    assert (ax.images[0].get_array() == w[order][:, order].numpy()).all()
    assert ax.get_xlabel().startswith("key sample j") and ax.get_ylabel().startswith("query sample i")
    vertical = sorted({ln.get_xdata()[0] for ln in ax.lines if ln.get_xdata()[0] == ln.get_xdata()[1]})
    assert vertical == pytest.approx([1.5, 3.5])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Ж", "ա", "ß"]
    plain = attention_heatmap(w)                                      # no labels: no sorting, no lines
    assert not plain.axes[0].lines and plain.axes[0].get_xlabel() == "key sample j"
    plt.close("all")


def test_directed_graph_draws_one_arrow_per_edge_and_marks_mutual_pairs():
    from bgtutorial.plots.attention import class_circle_layout, directed_graph

    adj = torch.eye(4, dtype=torch.bool)
    adj[0, 1] = adj[1, 0] = True                                      # mutual
    adj[2, 0] = True                                                  # 2 keeps 0, 0 does not keep 2
    adj[3, 2] = True
    y = torch.tensor([0, 0, 1, 1])
    fig = directed_graph(adj, y, names=["a", "b"], title="kNN")
    ax = fig.axes[0]
    arrows = [t for t in ax.texts if t.arrow_patch is not None]
    styles = sorted(type(a.arrow_patch.get_arrowstyle()).__name__ for a in arrows)
    assert len(arrows) == 3 and styles.count("CurveFilledAB") == 1   # 2 one-way + 1 mutual (drawn once)
    one_way = [a for a in arrows if type(a.arrow_patch.get_arrowstyle()).__name__ == "CurveFilledB"]
    ends = sorted((tuple(a.xyann), tuple(a.xy)) for a in one_way)
    pos = class_circle_layout(y)                                      # the default layout
    assert ends == sorted([(tuple(pos[2]), tuple(pos[0])), (tuple(pos[3]), tuple(pos[2]))])   # tail i, head j
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["class a", "class b"] and "(2)" in legend[2] and "(1 pairs)" in legend[3]
    imgs = [torch.rand(3, 8, 8) for _ in range(4)]
    fig = directed_graph(adj, y, images=imgs, thumb_px=40)
    boxes = [c for c in fig.axes[0].artists]
    assert len(boxes) == 4 and boxes[0].offsetbox.get_zoom() == pytest.approx(5.0)
    plt.close("all")


def _history(module, batch_size=120, losses=(3.0, 2.5, 2.0, 1.8), r1=(0.1, 0.3, 0.4), plain_weight=-1.0):
    """A two-epoch history as train() writes it: two steps per epoch, R@1 and MAP@R per epoch."""
    steps = [{"epoch": i // 2, "batch": i % 2, "loss": v} for i, v in enumerate(losses)]
    epochs = [{"epoch": e + 1, "loss": (losses[2 * e] + losses[2 * e + 1]) / 2, "R@1": r1[e + 1],
               "MAP@R": r1[e + 1] / 2} for e in range(2)]
    return {"config": {"batch_size": batch_size, "batch_module": module, "plain_weight": plain_weight},
            "initial": {"R@1": r1[0], "MAP@R": r1[0] / 2}, "steps": steps, "epochs": epochs}


def test_compare_histories_never_puts_losses_of_different_batches_on_one_panel():
    runs = {"baseline": _history("none"), "batchformer": _history("batchformer", losses=(6.0, 5.0, 4.0, 3.5)),
            "bgformer": _history("bgformer", plain_weight=0.01)}
    fig = compare_histories(runs)                                       # default: the metrics only
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(" (")[0] for ax in titled] == ["R@1", "MAP@R"]
    assert not any("loss" in ax.get_title().lower() or "loss" in ax.get_ylabel().lower() for ax in fig.axes)
    for ax in titled:                                                   # one curve per run, named in the legend
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert [t.split(":")[0] for t in legend] == list(runs) and all("unseen" in t for t in legend)
    xs, ys = titled[0].lines[1].get_data()
    assert list(xs) == [0, 1, 2] and list(ys) == [0.1, 0.3, 0.4]
    plt.close(fig)

    fig = compare_histories(runs, with_loss=True)                       # one loss panel per run, never shared
    loss_axes = [ax for ax in fig.axes if "loss" in ax.get_title()]
    assert len(loss_axes) == 3
    for ax, (name, h) in zip(loss_axes, runs.items()):
        assert ax.get_title().startswith(f"{name}: training loss")
        per_step = [ln for ln in ax.lines if ln.get_label() == "train loss per step"]
        assert len(per_step) == 1 and list(per_step[0].get_ydata()) == [s["loss"] for s in h["steps"]]
    assert "B=120 plain samples" in loss_axes[0].get_title()
    assert "2B=240 samples" in loss_axes[1].get_title() and "batchformer" in loss_axes[1].get_title()
    assert "weighted 0.01 : 0.99" in loss_axes[2].get_title()
    plt.close(fig)


def test_plot_history_labels_train_and_eval_curves():
    from bgtutorial.plots.curves import loss_batch_note, plot_history

    h = _history("batchformer", batch_size=16)
    fig = plot_history(h)
    loss_ax, r1_ax = fig.axes[0], fig.axes[1]
    assert "2B=32 samples" in loss_ax.get_title()
    labels = [ln.get_label() for ln in loss_ax.lines]
    assert labels == ["train loss per step", "train loss, epoch mean"]
    xs, ys = loss_ax.lines[1].get_data()
    assert list(xs) == [1, 3] and list(ys) == [2.75, 1.9]               # the mean drawn at each epoch's last step
    assert "unseen test classes" in r1_ax.lines[0].get_label()
    plt.close(fig)
    for e, v in zip(h["epochs"], (4.0, 3.5)):                          # train() logs the plain half apart
        e["loss_plain"] = v
    fig = plot_history(h)
    plain = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("plain half alone")]
    assert len(plain) == 1 and list(plain[0].get_xdata()) == [1, 3] and list(plain[0].get_ydata()) == [4.0, 3.5]
    plt.close(fig)
    assert loss_batch_note({"config": {"batch_size": 900, "batch_module": "none", "loss": "hyperbolic"}}) \
        == "B=900 plain samples"
    assert "weighted 0.5 : 0.5" in loss_batch_note({"config": {"batch_size": 9, "batch_module": "bgformer",
                                                               "loss": "hyperbolic"}})


def test_embedding_projections_keep_one_colour_per_class_and_name_it():
    from bgtutorial.plots.retrieval import embedding_projections

    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    panels = {"untrained": (torch.randn(6, 5, generator=g), y), "trained": (torch.randn(6, 5, generator=g), y)}
    fig = embedding_projections(panels, names=["Ж", "ա", "ß"])
    assert [ax.get_title() for ax in fig.axes] == ["untrained", "trained"]
    colours = [[tuple(c.get_facecolor()[0]) for c in ax.collections] for ax in fig.axes]
    assert colours[0] == colours[1] and len(set(colours[0])) == 3
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["Ж", "ա", "ß"]
    plt.close(fig)


def test_ablation_plot_draws_means_seeds_and_the_baseline():
    from bgtutorial.plots.studies import ablation_plot

    fig = ablation_plot({0.0: [0.2, 0.4], 1.0: [0.5, 0.7]}, baseline=[0.3, 0.5], xlabel="λ",
                        title="glyphs-quick, 12 epochs, seeds 0 1")
    ax = fig.axes[0]
    (bars,) = ax.containers
    assert bars.get_label() == "mean ± std over 2 seeds"
    assert list(bars.lines[0].get_ydata()) == pytest.approx([0.3, 0.6])
    base = [ln for ln in ax.lines if ln.get_label().startswith("baseline")][0]
    assert base.get_ydata()[0] == pytest.approx(0.4)
    assert ax.get_title() == "glyphs-quick, 12 epochs, seeds 0 1"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0", "1.0"]
    plt.close(fig)


def test_poincare_figure_draws_the_ball_and_the_clip_radius():
    from bgtutorial.plots.hyperbolic import poincare_figure

    fig = poincare_figure(c=0.1, clip_r=2.3, n=50)
    ball = fig.axes[1]
    radii = sorted(p.get_radius() for p in ball.patches)
    clip_image = float(torch.tanh(torch.tensor(0.1 ** 0.5 * 2.3))) / 0.1 ** 0.5      # tanh(√c r)/√c
    assert radii == pytest.approx([clip_image, 0.1 ** -0.5])
    (clipped,) = [c for c in ball.collections if c.get_label().startswith("clipped")]
    norms = torch.tensor(clipped.get_offsets()).norm(dim=1)
    assert (norms <= clip_image + 1e-9).all() and (norms > clip_image - 1e-6).any()   # on or inside the clip image
    plt.close(fig)


def test_study_figures_draw_chance_every_level_and_a_zero_based_axis():
    """Chance as a line, a tick for every level that was run, and no y-axis that blows 0.01 up into a trend."""
    from bgtutorial.plots.studies import ablation_plot, robustness_curves, seed_spread

    def h(r1):
        return {"epochs": [{"R@1": r1}]}

    study = {lv: {"baseline": [h(0.50 - lv / 10), h(0.51 - lv / 10)], "bgformer": [h(0.505 - lv / 10)] * 2}
             for lv in (0.0, 0.2, 0.4)}
    fig = robustness_curves(study, chance=0.02)
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [0.0, 0.2, 0.4]
    assert ax.get_ylim()[0] == 0.0
    assert any(list(line.get_ydata()) == [0.02, 0.02] for line in ax.get_lines())
    assert any("chance" in t.get_text() for t in ax.get_legend().get_texts())
    single = robustness_curves({0.0: study[0.0]}).axes[0]   # one level: its methods stay close together
    xs = [x for line in single.get_lines() for x in line.get_xdata()]
    assert max(xs) - min(xs) < 0.05 * (single.get_xlim()[1] - single.get_xlim()[0])
    narrow = robustness_curves(study, from_zero=False).axes[0]
    assert narrow.get_ylim()[0] > 0.3                     # the opt-out keeps matplotlib's tight axis
    for fig in (seed_spread({"clean": {"baseline": [0.5, 0.51]}}, "R@1", chance=0.02),
                ablation_plot({"0.5": [0.5, 0.52]}, baseline=[0.5, 0.51], chance=0.02)):
        assert any(list(line.get_ydata()) == [0.02, 0.02] for line in fig.axes[0].get_lines())
    plt.close("all")


def test_paired_differences_draws_each_seed_and_the_interval_of_paired_summary():
    import numpy as np

    from bgtutorial.plots.studies import paired_differences
    from bgtutorial.stats import paired_summary

    base = [0.50, 0.52, 0.47, 0.55, 0.51]
    pairs = {"A − base": paired_summary([b + d for b, d in zip(base, [0.01, 0.03, 0.02, 0.00, 0.04])], base),
             "B − base": paired_summary([b - 0.01 for b in base], base)}
    fig, ax = plt.subplots()
    paired_differences(ax, pairs, "title")
    dots = [c.get_offsets() for c in ax.collections if c.get_offsets().shape[0] == 5]
    assert len(dots) == 2
    for (name, s), xy in zip(pairs.items(), dots):
        assert np.allclose(xy[:, 1], s["differences"]) and np.allclose(xy[:, 0], list(pairs).index(name))
    bars = [c for c in ax.containers]
    assert len(bars) == 2
    for (name, s), bar in zip(pairs.items(), bars):
        (x, y), = bar.lines[0].get_xydata()
        segs = bar.lines[2][0].get_segments()[0]                        # the vertical error segment
        assert np.isclose(y, s["mean"]) and np.allclose(sorted(segs[:, 1]), [s["low"], s["high"]])
    zero = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert zero and np.allclose(zero[0].get_ydata(), 0)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(pairs)
    plt.close(fig)
