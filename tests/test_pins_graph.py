"""The batch graph's defaults and readouts against loops written here: BatchGraph.build keeps each node in
its own kNN row and accepts a batch without positives unless asked; other_class_mass and same_label_share
by hand. The features are not normalised, so a node's similarity with itself is not always its largest."""
import math

import pytest
import torch

from bgtutorial.graph import BatchGraph, other_class_mass, same_label_share, visual_graph


def knn_rows(x, k, include_self):
    """Row i of the kNN graph by loops on S = x xᵀ: itself first (when asked), then the largest similarities."""
    rows, b = [], len(x)
    for i in range(b):
        sim = {j: sum(float(a) * float(c) for a, c in zip(x[i], x[j])) for j in range(b)}
        if include_self:
            sim[i] = math.inf
        order = sorted(range(b), key=lambda j: (-sim[j], j))
        rows.append(sorted(order[:k]))
    return rows


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=g) * torch.linspace(0.2, 3.0, 8)[:, None]   # norms from small to large
    x[0] = 0.1 * x[7]                                               # S[0, 7] = 10 S[0, 0]: 0 is not its own nearest
    return x, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _rows(adj):
    return [row.nonzero()[:, 0].tolist() for row in adj]


def test_build_keeps_each_node_in_its_own_row_by_default(batch):
    x, y = batch
    with_self, without = knn_rows(x, 3, True), knn_rows(x, 3, False)
    assert with_self != without                                     # the data tell the two rules apart
    assert _rows(BatchGraph.build(x, y, k=3).visual) == with_self
    assert _rows(BatchGraph.build(x, y, k=3, include_self=False).visual) == without
    assert _rows(visual_graph(x, 3)) == with_self and _rows(visual_graph(x, 3, include_self=False)) == without


def test_build_accepts_a_batch_without_positives_unless_asked(batch):
    x, _ = batch
    lone = torch.arange(8)
    g = BatchGraph.build(x, lone, k=3)
    assert torch.equal(g.semantic, torch.eye(8, dtype=torch.bool))
    torch.testing.assert_close(g.semantic_norm, torch.eye(8))        # (1 + 1) / sqrt(2 * 2) on the diagonal
    with pytest.raises(ValueError, match="no positive pair"):
        BatchGraph.build(x, lone, k=3, require_positive=True)


def test_build_normalises_the_label_graph(batch):
    x, y = batch
    norm = BatchGraph.build(x, y, k=3).semantic_norm
    for i in range(8):
        for j in range(8):
            a = float(y[i] == y[j]) + float(i == j)                 # Y + I: degree 3 in pairs
            assert float(norm[i, j]) == pytest.approx(a / 3)


def test_other_class_mass_by_loops(batch):
    _, y = batch
    attn = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(2)).softmax(-1)
    mass = other_class_mass(attn, y)
    for h in range(2):
        for i in range(8):
            want = sum(float(attn[h, i, j]) for j in range(8) if y[j] != y[i])
            assert float(mass[h, i]) == pytest.approx(want, abs=1e-6)
    means = other_class_mass(attn, y, mean=True)
    assert means.shape == (2,) and means.tolist() == pytest.approx(mass.mean(-1).tolist(), abs=1e-6)
    assert float(other_class_mass(torch.full((8, 8), 1 / 8), y, mean=True)) == pytest.approx(6 / 8)
    with pytest.raises(ValueError, match=r"attn must be \(\.\.\., B, B\) and labels \(B,\), got \(8, 7\) and \(8,\)"):
        other_class_mass(attn[0, :, :7], y)


def test_same_label_share_of_a_graph_without_edges_is_nan(batch):
    _, y = batch
    share = same_label_share(torch.eye(8, dtype=torch.bool), y)
    assert math.isnan(float(share))
    full = same_label_share(torch.ones(8, 8), y)
    assert float(full) == pytest.approx(8 / 56)                      # 8 same-label ordered pairs of 56


def test_density_without_a_visual_graph_names_the_fix(batch):
    _, y = batch
    with pytest.raises(ValueError, match="build it with features x"):
        BatchGraph.build(None, y, k=3).density
    assert BatchGraph.build(batch[0], y, k=3).density == pytest.approx(24 / 64)


def test_normalize_adjacency_of_a_weighted_graph_by_loops():
    """Row sums below 1 (weights, no self-loops) and an empty row: D^-1/2 A D^-1/2 entry by entry, 0 where d = 0."""
    from bgtutorial.graph import normalize_adjacency

    a = torch.tensor([[0.0, 0.2, 0.1, 0.0], [0.2, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    got = normalize_adjacency(a, add_self_loops=False)
    deg = [sum(float(v) for v in row) for row in a]
    for i in range(4):
        for j in range(4):
            want = float(a[i, j]) / math.sqrt(deg[i] * deg[j]) if deg[i] and deg[j] else 0.0
            assert float(got[i, j]) == pytest.approx(want, rel=1e-6)


def test_label_graph_messages():
    from bgtutorial.graph import semantic_graph

    with pytest.raises(ValueError, match=r"^labels must be \(B,\), got shape \(2, 3\)$"):
        semantic_graph(torch.zeros(2, 3))
    with pytest.raises(ValueError) as err:
        semantic_graph(torch.arange(3), require_positive=True)
    assert str(err.value) == ("the batch has no positive pair (no two samples share a label), so the label graph is "
                              "empty; build batches with MPerClassBatchSampler and m >= 2")
