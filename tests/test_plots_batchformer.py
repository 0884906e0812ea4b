"""Notebook 02's figures (two streams, coupling maps, a batch's attention, seed spread) and the
attention weights they show."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bgtutorial import BatchFormer  # noqa: E402
from bgtutorial.plots.attention import batch_attention, coupling_maps  # noqa: E402
from bgtutorial.plots.diagrams import two_stream_diagram  # noqa: E402
from bgtutorial.plots.studies import seed_spread  # noqa: E402


def texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]


def test_two_stream_diagram_shows_one_or_two_heads():
    shared, unshared = texts(two_stream_diagram(True)), texts(two_stream_diagram(False))
    assert any("shared head h" in t for t in shared) and not any("h'" in t for t in shared)
    assert any("module head h'" in t for t in unshared) and any("own proxies P'" in t for t in unshared)
    assert not any("shared head h" in t for t in unshared)
    for t in (shared, unshared):                               # both draw the test path without the module
        assert any("dropped at test" in s for s in t) and any("never went through M" in s for s in t)
    plt.close("all")


def test_coupling_maps_blank_exact_zeros_and_count_them():
    labels = torch.tensor([1, 0, 1, 0])
    dense = torch.rand(4, 4) + 0.1
    diag = torch.diag(torch.rand(4) + 0.1)
    fig = coupling_maps({"with M": dense, "without M": diag}, labels, names=["a", "b"])
    heat = [ax for ax in fig.axes if ax.images and ax.get_ylabel()]
    assert len(heat) == 2
    assert "0% of the off-diagonal" in heat[0].get_title() and "100% of the off-diagonal" in heat[1].get_title()
    shown = heat[1].images[0].get_array()
    assert shown.mask.sum() == 12                              # the 12 exact zeros are left white
    order = torch.argsort(labels, stable=True)
    np.testing.assert_allclose(heat[0].images[0].get_array().data, dense[order][:, order].numpy(), rtol=1e-6)
    assert [t.get_text() for t in heat[0].get_xticklabels()] == ["a", "b"]
    plt.close("all")


def test_batch_attention_sorts_by_class_and_shows_every_image():
    labels = torch.tensor([2, 0, 1, 0, 2, 1])
    w = torch.softmax(torch.randn(6, 6), dim=1)
    images = [torch.full((3, 8, 8), i / 6) for i in range(6)]
    fig = batch_attention(w, labels, images, names=["x", "y", "z"], title="t")
    heat = fig.axes[0]
    assert len(heat.images) == 1 + 6                          # the matrix, then one thumbnail per sample
    order = torch.argsort(labels, stable=True)
    np.testing.assert_allclose(heat.images[0].get_array(), w[order][:, order].numpy(), rtol=1e-6)
    for im in heat.images[1:]:
        x0, x1, bottom, top = im.get_extent()
        assert x1 < -0.5 and x1 - x0 == bottom - top == 2     # left of the matrix, square, as tall as a class block
        i = int(round(im.get_array()[0, 0, 0] * 6))           # which image this is
        rows = [p for p in range(6) if top < p < bottom]      # the sorted positions it spans
        assert all(labels[order[p]] == labels[i] for p in rows) and len(rows) == 2
    assert [t.get_text() for t in heat.get_yticklabels()] == ["x", "y", "z"]
    plt.close("all")


def test_seed_spread_plots_mean_and_std():
    values = {"balanced": {"baseline": [0.5, 0.6, 0.7], "batchformer": [0.4, 0.5, 0.9]},
              "long-tailed": {"baseline": [0.2, 0.3, 0.1]}}
    fig = seed_spread(values, "R@1", "t")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["baseline (mean ± std, 3 seeds)", "batchformer (mean ± std, 3 seeds)"]
    means = sorted(np.round(np.asarray(line.get_ydata(), float), 6).tolist() for line in ax.lines
                   if line.get_marker() == "o")
    assert means == sorted([[0.6, 0.2], [0.6]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["balanced", "long-tailed"]
    xs = {tuple(np.round(np.asarray(line.get_xdata(), float), 6)) for line in ax.lines if line.get_marker() == "o"}
    # two methods straddle the first tick; the second group's only method sits on its tick
    assert xs == {(-0.175, 1.0), (0.175,)}
    plt.close("all")


def test_attention_weights_match_a_loop():
    torch.manual_seed(0)
    layer = BatchFormer(16, num_heads=4).layers[0].eval()
    x = torch.randn(6, 16)
    w = layer.attention_weights(x)
    q, k = layer.qkv(x)[:, :16], layer.qkv(x)[:, 16:32]
    for h in range(4):
        sl = slice(4 * h, 4 * h + 4)
        for i in range(6):
            scores = torch.stack([q[i, sl] @ k[j, sl] for j in range(6)]) / math.sqrt(4)
            torch.testing.assert_close(w[h, i], torch.softmax(scores, 0))
    # the same weights mix the values inside the layer's attention
    v = layer.qkv(x)[:, 32:]
    mixed = torch.cat([w[h] @ v[:, 4 * h:4 * h + 4] for h in range(4)], dim=1)
    torch.testing.assert_close(layer.proj(mixed), layer.attention(x))
