"""Recall@K and MAP@R pinned against a brute-force reference written here, on the data where a bug in
the search would show: a common offset (cosine and Euclidean rank differently there), a column
dominated by huge negative values (a wrong-sided scale overflows float32 and fakes R@1 = 1.0),
neighbours handed in, K reaching N - 1 and the smallest allowed N. The data have no distance ties.
"""
import math
import random

import pytest
import torch

from bgtutorial.ranking import Ranking

from bgtutorial.metrics import map_at_r, recall_at_k, retrieval_metrics
from naive import naive_retrieval


def _rows(x):
    return [[float(v) for v in row] for row in x]


def _order(rows, i, metric):
    """The other samples, nearest first, by exact Python arithmetic on the raw vectors."""
    def key(j):
        if metric == "cosine":
            dot = sum(a * b for a, b in zip(rows[i], rows[j]))
            return -dot / (math.sqrt(sum(a * a for a in rows[i])) * math.sqrt(sum(b * b for b in rows[j])))
        return sum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))
    return sorted((j for j in range(len(rows)) if j != i), key=key)


def ref_recall(x, y, ks, metric="euclidean"):
    rows = _rows(x)
    return naive_retrieval(len(rows), y, lambda i: _order(rows, i, metric), ks)[0]


def ref_map_at_r(x, y, metric="euclidean"):
    rows = _rows(x)
    return naive_retrieval(len(rows), y, lambda i: _order(rows, i, metric))[1]


@pytest.fixture
def offset_data():
    """Three classes in 4-D around a large common offset: cosine and Euclidean rank differently."""
    rng = random.Random(7)
    y = [c for c in range(6) for _ in range(7)]
    rng.shuffle(y)
    x = [[5.0 + 0.6 * (c == d) + rng.gauss(0, 1) for d in range(4)] for c in y]
    x = [[v * (1 + 0.8 * row[0] / 6) for v in row] for row in x]       # norms vary: cosine is not Euclidean
    return torch.tensor(x, dtype=torch.float64), torch.tensor(y)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_recall_and_map_at_r_on_offset_data_match_the_brute_force(offset_data, metric):
    x, y = offset_data
    ks = (1, 2, 4, 8)
    assert recall_at_k(x, y, ks=ks, metric=metric) == pytest.approx(ref_recall(x, y, ks, metric), abs=1e-12)
    assert map_at_r(x, y, metric=metric) == pytest.approx(ref_map_at_r(x, y, metric), abs=1e-6)


def test_offset_data_tell_cosine_from_euclidean(offset_data):
    """The reference ranks the two metrics differently here, so the test above catches one run for the other,
    and cosine on centred vectors is neither."""
    x, y = offset_data
    cos, euc = ref_recall(x, y, (1,), "cosine")[1], ref_recall(x, y, (1,), "euclidean")[1]
    centred = x - x.mean(0)
    assert cos != euc and ref_recall(centred, y, (1,), "cosine")[1] != cos
    assert ref_map_at_r(x, y, "cosine") != pytest.approx(ref_map_at_r(x, y, "euclidean"), abs=1e-3)


def test_a_negative_dominated_column_scores_the_true_recall_not_a_perfect_one():
    """A float64 column of about -1e300 dominates every distance: it must be scaled down by its own (the
    negative) side before it becomes float32, or it turns to -inf, every distance to NaN and R@1 to a fake 1.0.
    The reference ranks the same data times 1e-300 (a common factor: the same order)."""
    rng = random.Random(3)
    y = [i % 6 for i in range(36)]
    x = [[-1e300 * (1 + rng.random()), rng.gauss(0, 1), rng.gauss(0, 1)] for _ in y]
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    ref = ref_recall(x * 1e-300, y, (1, 2, 4))
    assert ref[1] < 0.5
    assert recall_at_k(x, y, ks=(1, 2, 4)) == pytest.approx(ref, abs=1e-12)
    assert map_at_r(x, y) == pytest.approx(ref_map_at_r(x * 1e-300, y), abs=1e-6)
    assert retrieval_metrics(x, y, ks=(1,), with_nmi=False)["R@1"] == pytest.approx(ref[1], abs=1e-12)
    x32 = torch.cat([x[:, :1] * 1e-270, x[:, 1:]], 1).float()       # about -1e30: float32 squares overflow
    assert recall_at_k(x32, y, ks=(1, 2, 4)) == pytest.approx(ref_recall(x32, y, (1, 2, 4)), abs=1e-12)


def test_neighbours_passed_in_are_the_ones_scored():
    """Given neighbours (here a made-up ranking, not the true one), Recall@K and MAP@R read them."""
    x = torch.tensor([[0.0, 0.1], [0.2, 0.0], [3.0, 0.1], [3.3, 0.4], [7.0, 0.2], [7.1, 0.9]])
    y = torch.tensor([0, 0, 1, 1, 2, 2])                            # true neighbours: each query's twin first
    assert recall_at_k(x, y, ks=(1,)) == {1: 1.0}
    fake = torch.tensor([[2, 1], [3, 0], [0, 3], [1, 2], [5, 0], [4, 1]])   # the twin second, or first for 4 and 5
    ranking = Ranking(fake, torch.zeros_like(fake, dtype=torch.bool), 2)      # no ties
    assert recall_at_k(x, y, ks=(1, 2), neighbours=ranking) == {1: pytest.approx(2 / 6), 2: 1.0}
    assert map_at_r(x, y, neighbours=ranking) == pytest.approx(2 / 6)
    with pytest.raises(ValueError):
        recall_at_k(x, y, ks=(1, 2, 4), neighbours=ranking)                  # deeper than the ranking
    with pytest.raises(ValueError, match="must be a Ranking"):
        recall_at_k(x, y, ks=(1,), neighbours=fake)                          # bare indices lose the ties


def test_recall_at_n_minus_1_reaches_the_farthest_sample():
    """Each query's only classmate is its farthest sample: R@(N-1) is 1, R@(N-2) is not."""
    x = torch.tensor([[0.0], [1.0], [2.1], [3.3], [10.0]])
    y = torch.tensor([0, 1, 2, 3, 0])                                # 0 and 4 are each other's farthest
    got = recall_at_k(x, y, ks=(3, 4))
    assert got == ref_recall(x, y, (3, 4)) == {3: 0.0, 4: pytest.approx(2 / 5)}
    assert map_at_r(x, y) == 0.0                                     # R = 1: only rank 1 counts, a miss


def test_two_samples_are_enough():
    x, y = torch.tensor([[0.0, 1.0], [2.0, 0.5]]), torch.tensor([3, 3])
    assert recall_at_k(x, y, ks=(1, 2)) == {1: 1.0, 2: 1.0}
    assert map_at_r(x, y) == 1.0
    assert recall_at_k(x, torch.tensor([3, 4]), ks=(1,)) == {1: 0.0}
    with pytest.raises(ValueError, match="at least 2"):
        recall_at_k(x[:1], y[:1])


def test_the_scale_by_a_power_of_two_is_exact():
    """Rows x and -x: the column means are 0, so the centring moves nothing and the prepared embeddings are
    the input times the power of two that brings the largest entry into [1, 2), bit for bit (2**9 here, an
    odd power: two factors of 2**4.5 would round about 40 % of the entries differently)."""
    from bgtutorial.metrics import prepare_embeddings

    half = torch.rand(200, 4, generator=torch.Generator().manual_seed(0)) * 2.0 ** -9
    half[0, 0] = 1.9 * 2.0 ** -9                                    # the largest entry: 1.9 after the scale
    x = torch.cat([half, -half])
    assert torch.equal(prepare_embeddings(x), x * 512.0)
    assert torch.equal(prepare_embeddings(x * 2.0 ** 20), x * 512.0)


@pytest.mark.parametrize("bad_rows, listed", [(5, "rows [0, 1, 2, 3, 4])"), (6, "rows [0, 1, 2, 3, 4] ...)")])
def test_non_finite_rows_are_named_the_first_five_then_an_ellipsis(bad_rows, listed):
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    x[:bad_rows, 1] = float("nan")
    with pytest.raises(ValueError) as err:
        recall_at_k(x, torch.arange(8) % 2)
    assert str(err.value) == (f"{bad_rows} of 8 embeddings hold NaN or inf ({listed}: the model diverged or was "
                              "not loaded; lower the learning rate and train again, or check the checkpoint")


def test_error_messages_name_what_is_wrong():
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"labels must be \(N,\) with N=3, got shape \(4,\)$"):
        recall_at_k(x, torch.arange(4))
    with pytest.raises(ValueError) as err:
        recall_at_k(x[:1], torch.arange(1))
    assert str(err.value) == "need at least 2 samples: each query is compared with the others"
    with pytest.raises(ValueError) as err:
        map_at_r(x, torch.arange(3))
    assert str(err.value) == "MAP@R needs at least one class with two samples"
    with pytest.raises(ValueError) as err:
        recall_at_k(x, torch.arange(3), ks=(0,))
    assert str(err.value) == ("ks must be integers >= 1 (Recall@K counts the K nearest neighbours), got [0]; "
                              "e.g. ks=(1, 2, 4, 8)")


def test_retrieval_metrics_search_once_and_nmi_passes_its_restarts(monkeypatch):
    """One kNN search serves Recall@K and MAP@R; nmi hands n_init to k-means (spies on the two calls)."""
    import sklearn.cluster

    import bgtutorial.metrics as metrics

    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(30) % 5
    calls, inits = [], []
    real_knn, real_kmeans = metrics.knn, sklearn.cluster.KMeans
    real_rank = metrics.rank_neighbours
    monkeypatch.setattr(metrics, "rank_neighbours", lambda *a, **kw: calls.append(a[1]) or real_rank(*a, **kw))

    def spy(**kw):
        inits.append(kw.get("n_init"))
        return real_kmeans(**kw)

    monkeypatch.setattr(sklearn.cluster, "KMeans", spy)
    out = retrieval_metrics(x, y, ks=(1, 2))
    assert calls == [5] and inits == [1]                             # k = max(max(ks), R_max = 5)
    assert out["R@1"] == pytest.approx(ref_recall(x, y, (1,))[1]) and out["MAP@R"] == pytest.approx(ref_map_at_r(x, y))
    metrics.nmi(x, y, n_init=7)
    assert inits == [1, 7]


def test_the_neighbour_errors_say_what_to_pass():
    x, y = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match=r"^metric must be 'euclidean' or 'cosine', got 'manhattan'$"):
        recall_at_k(x, y, ks=(1,), metric="manhattan")
    with pytest.raises(ValueError, match=r"^neighbours must be a Ranking \(rank_neighbours, ranking_from_distances\): "
                                         r"bare indices lose the ties, and the metrics would depend on the order of "
                                         r"the samples$"):
        map_at_r(x, y, neighbours=torch.tensor([[1], [0], [1]]))
