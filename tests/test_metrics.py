"""Metrics against brute-force loops and against pytorch-metric-learning's AccuracyCalculator."""
import math

import numpy as np
import pytest
import torch

from bgtutorial.metrics import knn, map_at_r, nmi, prepare_embeddings, recall_at_k, retrieval_metrics
from bgtutorial.ranking import rank_neighbours
from naive import naive_retrieval


def _ranked(x, i):
    return [j for _, j in sorted((float(((x[i] - x[j]) ** 2).sum()), j) for j in range(len(x)) if j != i)]


def brute_recall(x, y, ks):
    return naive_retrieval(len(x), y, lambda i: _ranked(x, i), ks)[0]


def brute_map_at_r(x, y):
    return naive_retrieval(len(x), y, lambda i: _ranked(x, i))[1]


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 6, (90,), generator=g)
    x = torch.randn(90, 8, generator=g) + 0.8 * torch.nn.functional.one_hot(y, 8).float()
    return x, y


def test_recall_matches_brute_force(data):
    x, y = data
    ours = recall_at_k(x, y, ks=(1, 2, 4, 8))
    ref = brute_recall(x, y.tolist(), (1, 2, 4, 8))
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-9)
    assert ours[1] <= ours[2] <= ours[4] <= ours[8]


def test_chunking_does_not_change_the_result(data):
    x, y = data
    full = knn(x, 5, chunk_size=10_000)
    assert torch.equal(knn(x, 5, chunk_size=7), full)
    assert recall_at_k(x, y, chunk_size=13) == recall_at_k(x, y, chunk_size=1000)


def test_query_excluded_from_its_own_neighbours(data):
    x, _ = data
    nn = knn(x, 3)
    assert not (nn == torch.arange(len(x))[:, None]).any()
    # duplicate points: the twin is the nearest, the point itself is never returned
    x2 = torch.cat([x[:5], x[:5]])
    assert torch.equal(knn(x2, 1)[:, 0], torch.tensor([5, 6, 7, 8, 9, 0, 1, 2, 3, 4]))


def test_known_values():
    x = torch.tensor([[0.0], [0.1], [1.0], [1.1], [5.0], [5.2]])
    y = torch.tensor([0, 0, 1, 1, 0, 2])
    # NN: 0->1 ok, 1->0 ok, 2->3 ok, 3->2 ok, 4->5 wrong, 5->4 wrong
    assert recall_at_k(x, y, ks=(1,))[1] == pytest.approx(4 / 6)
    assert map_at_r(x, y) == pytest.approx(brute_map_at_r(x, y.tolist()))


def test_map_at_r_matches_brute_force(data):
    x, y = data
    assert map_at_r(x, y) == pytest.approx(brute_map_at_r(x, y.tolist()), abs=1e-6)


def test_perfect_embedding_scores_one():
    y = torch.arange(5).repeat_interleave(10)
    x = torch.nn.functional.one_hot(y, 5).float() + 0.01 * torch.randn(50, 5)
    m = retrieval_metrics(x, y)
    assert m["R@1"] == m["MAP@R"] == pytest.approx(1.0) and m["NMI"] == pytest.approx(1.0)


def test_against_pytorch_metric_learning(data):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x, y = data
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    ref = calc.get_accuracy(x, y, ref_includes_query=True)
    assert recall_at_k(x, y, ks=(1,))[1] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert map_at_r(x, y) == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-5)


def test_nmi_against_contingency_formula(data):
    from sklearn.cluster import KMeans

    x, y = data
    z = prepare_embeddings(x).numpy()
    order = sorted(range(len(z)), key=lambda i: tuple(z[i]))        # rows in lexicographic order, as nmi does
    pred = KMeans(n_clusters=6, n_init=1, random_state=0).fit_predict(z[order])
    yy = y.numpy()[order]
    n = len(yy)
    cont = np.zeros((6, 6))
    for a, b in zip(yy, pred):
        cont[a, b] += 1
    pa, pb = cont.sum(1) / n, cont.sum(0) / n
    mi = sum(cont[i, j] / n * math.log(cont[i, j] / n / (pa[i] * pb[j]))
             for i in range(6) for j in range(6) if cont[i, j] > 0)
    h = lambda p: -sum(v * math.log(v) for v in p if v > 0)  # noqa: E731
    assert nmi(x, y) == pytest.approx(mi / ((h(pa) + h(pb)) / 2), abs=1e-9)


def test_bounded_memory_at_scale():
    # 12,000 x 512: chunked; must run without building the 12k x 12k matrix at once
    x = torch.randn(12_000, 512)
    y = torch.randint(0, 100, (12_000,))
    r = recall_at_k(x, y, chunk_size=2048)
    assert 0 <= r[1] <= r[8] <= 1


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        recall_at_k(torch.randn(5), torch.arange(5))
    with pytest.raises(ValueError, match="labels must be"):
        recall_at_k(torch.randn(5, 2), torch.arange(4))
    with pytest.raises(ValueError, match="at least 2"):
        recall_at_k(torch.randn(1, 2), torch.arange(1))
    with pytest.raises(ValueError, match="metric"):
        knn(torch.randn(5, 2), 1, metric="manhattan")


def test_shared_neighbours_give_the_same_metrics(data):
    x, y = data
    nn = rank_neighbours(x, 40)
    assert recall_at_k(x, y, neighbours=nn) == recall_at_k(x, y)
    assert map_at_r(x, y, neighbours=nn) == map_at_r(x, y)
    with pytest.raises(ValueError, match="complete to rank 3, 19 are needed"):
        map_at_r(x, y, neighbours=rank_neighbours(x, 3))
    with pytest.raises(ValueError, match="neighbours must be a Ranking"):
        map_at_r(x, y, neighbours=knn(x, 40))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_embeddings_are_refused(data, bad):
    """A diverged model (all-NaN embeddings) used to score Recall@1 = 1.0: each query found its twin."""
    x, y = data
    broken = torch.full_like(x, bad)
    with pytest.raises(ValueError, match=r"90 of 90 embeddings hold NaN or inf .*lower the learning rate"):
        retrieval_metrics(broken, y, with_nmi=False)
    one_row = x.clone()
    one_row[7, 3] = bad
    for metric in (recall_at_k, map_at_r, nmi, retrieval_metrics):
        with pytest.raises(ValueError, match=r"1 of 90 embeddings hold NaN or inf \(rows \[7\]\)"):
            metric(one_row, y)
    with pytest.raises(ValueError, match="NaN or inf"):
        knn(one_row, 3)


@pytest.mark.parametrize("ks", [(0,), (1, -2), (), (1.5,)])
def test_recall_needs_k_of_at_least_one(data, ks):
    x, y = data
    with pytest.raises(ValueError, match=r"ks must be integers >= 1 .*e\.g\. ks=\(1, 2, 4, 8\)"):
        recall_at_k(x, y, ks=ks)
    with pytest.raises(ValueError, match="ks must be integers >= 1"):
        retrieval_metrics(x, y, ks=ks, with_nmi=False)
    with pytest.raises(ValueError, match=r"k must be in \[1, N-1\]"):
        knn(x, 0)


def test_knn_equals_the_whole_distance_matrix_formula():
    # knn's chunks, in-place norms and diagonal mask give bit for bit the indices of the plain
    # formula |q|² - 2 q·x + |x|² on the whole (N, N) matrix of the prepared embeddings, the
    # query masked with +inf
    g = torch.Generator().manual_seed(1)
    x = prepare_embeddings(torch.randn(300, 32, generator=g) + 3.0)
    sq = (x * x).sum(1)
    dist = sq[:, None] - 2 * x @ x.T + sq[None, :]
    dist.fill_diagonal_(float("inf"))
    ref = dist.topk(10, dim=1, largest=False).indices
    for chunk in (64, 300, 1024):
        assert torch.equal(knn(x, 10, chunk_size=chunk), ref)


def test_recall_counts_a_miss_as_a_miss_when_k_reaches_n():
    """The probe of issue 23: with K >= N every other sample is retrieved, and a query whose class has
    no other sample was counted as a hit (R@8 = 1.0 on three samples; the right value is 2/3)."""
    x, y = torch.tensor([[0.0], [1.0], [5.0]]), torch.tensor([0, 0, 1])
    assert recall_at_k(x, y, ks=(1, 8)) == {1: pytest.approx(2 / 3), 8: pytest.approx(2 / 3)}
    g = torch.Generator().manual_seed(0)
    x6, y6 = torch.randn(6, 4, generator=g), torch.tensor([0, 0, 1, 1, 2, 3])   # two lone queries
    ours = retrieval_metrics(x6, y6, ks=(1, 2, 4, 8, 16), with_nmi=False)
    ref = brute_recall(x6, y6.tolist(), (1, 2, 4, 8, 16))
    assert [ours[f"R@{k}"] for k in ref] == pytest.approx(list(ref.values()))
    assert ours["R@8"] == ours["R@16"] == pytest.approx(4 / 6)
    nn = rank_neighbours(x6, 5)                                      # neighbours passed in: the same rule
    assert recall_at_k(x6, y6, ks=(8,), neighbours=nn)[8] == pytest.approx(4 / 6)


def _brute_recall64(x, y, ks):
    """Recall@K from float64 differences (no |q|² - 2 q·x + |x|² expansion), for huge values."""
    x = x.double()
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)              # (N, N)
    d.fill_diagonal_(float("inf"))
    order = d.argsort(dim=1, stable=True)
    hit = y[order[:, :-1]] == y[:, None]
    return {k: float(hit[:, :k].any(1).double().mean()) for k in ks}


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_huge_or_tiny_finite_embeddings_give_the_true_recall(data, scale):
    """The probe of issue 23: a column of 1e20 overflowed float32's squared norms, every distance became
    NaN and every Recall@K 1.0 (the true values are those without the column, which adds the same to
    every coordinate). Tiny embeddings (1e-30) had squares that vanish in float32."""
    x, y = data
    ks = (1, 2, 4, 8)
    truth = recall_at_k(x, y, ks=ks)
    assert truth[1] < 0.9                                            # far from the fake perfect score
    column = torch.cat([x, torch.full((len(x), 1), 1e20)], dim=1)   # (N, D+1): a constant column of 1e20
    assert recall_at_k(column, y, ks=ks) == truth
    assert retrieval_metrics(column, y, ks=ks, with_nmi=False) == retrieval_metrics(x, y, ks=ks, with_nmi=False)
    assert recall_at_k(x * scale, y, ks=ks) == truth                 # a power-of-ten scale: the same order
    assert recall_at_k(x.double() * 1e300, y, ks=ks) == truth        # float64 beyond float32's range
    spread = x.clone()
    spread[:, 0] *= 1e20                                             # one column dominates every distance
    assert recall_at_k(spread, y, ks=ks) == pytest.approx(_brute_recall64(spread, y, ks))
    assert recall_at_k(column, y, ks=ks, metric="cosine") == pytest.approx(_brute_recall64(
        torch.nn.functional.normalize(column.double(), dim=1), y, ks))
    assert 0.0 <= nmi(column, y) <= 1.0                             # k-means on finite, centred data


def test_prepare_embeddings_keeps_the_distances_order(data):
    x, _ = data
    z = prepare_embeddings(x * 1e20 + 5e20)
    assert z.dtype == torch.float32 and torch.isfinite(z).all() and 1.0 <= float(z.abs().max()) < 2.0
    assert ((z.max(0).values + z.min(0).values) / 2).abs().max() < 1e-6   # centred on the midrange
    assert torch.equal(knn(x * 1e20 + 5e20, 5), knn(x, 5))
    with pytest.raises(ValueError, match="NaN or inf"):
        prepare_embeddings(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
