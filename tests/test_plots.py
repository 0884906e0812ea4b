"""Figures: they draw what their docstrings say (panels, order, class boundaries)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bgtutorial.bgformer import BGFormer  # noqa: E402
from bgtutorial.graph import visual_graph  # noqa: E402
from bgtutorial.plots import head_graphs  # noqa: E402


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
