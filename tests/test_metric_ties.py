"""Recall@K, MAP@R and NMI do not depend on the order of the samples (issue 32, item 1).

The reference: every ordering of each group of tied neighbours, enumerated with itertools, and the
plain metric averaged over them (the expected value the package computes in closed form).
"""
import itertools
import math
from fractions import Fraction

import pytest
import torch

from bgtutorial.evaluate import poincare_metrics
from bgtutorial.metrics import knn, map_at_r, nmi, recall_at_k, retrieval_metrics


def _orderings(x, i):
    """All rankings of the others of query i: distance groups in order, each group in every order."""
    dist = {}
    for j in range(len(x)):
        if j != i:
            d = sum((Fraction(a) - Fraction(b)) ** 2 for a, b in zip(x[i], x[j]))   # exact
            dist.setdefault(d, []).append(j)
    groups = [dist[d] for d in sorted(dist)]
    for parts in itertools.product(*(itertools.permutations(g) for g in groups)):
        yield [j for part in parts for j in part]


def expected_recall(x, y, ks):
    out = {k: Fraction(0) for k in ks}
    for i in range(len(x)):
        orders = list(_orderings(x, i))
        for k in ks:
            out[k] += Fraction(sum(any(y[j] == y[i] for j in o[:k]) for o in orders), len(orders))
    return {k: float(v / len(x)) for k, v in out.items()}


def expected_map_at_r(x, y):
    aps = []
    for i in range(len(x)):
        r = sum(y[j] == y[i] for j in range(len(x)) if j != i)
        if r == 0:
            continue
        orders = list(_orderings(x, i))
        total = Fraction(0)
        for o in orders:
            hits, s = 0, Fraction(0)
            for rank, j in enumerate(o[:r], 1):
                if y[j] == y[i]:
                    hits += 1
                    s += Fraction(hits, rank)
            total += s / r
        aps.append(total / len(orders))
    return float(sum(aps) / len(aps))


def test_the_issue_examples_no_longer_depend_on_the_order():
    """Issue 32: [[0],[1],[-1]] gave R@1 0.667 or 0.333 by order; 20 identical embeddings R@4 0.35 or 0.65."""
    a = recall_at_k(torch.tensor([[0.0], [1.0], [-1.0]]), torch.tensor([0, 0, 1]), ks=(1,))[1]
    b = recall_at_k(torch.tensor([[1.0], [-1.0], [0.0]]), torch.tensor([0, 1, 0]), ks=(1,))[1]
    assert a == b == pytest.approx(expected_recall([[0], [1], [-1]], [0, 0, 1], (1,))[1]) == pytest.approx(0.5)
    same = torch.zeros(20, 4)
    y = torch.tensor([0] * 7 + [1] * 13)
    values = {recall_at_k(same, y[torch.randperm(20, generator=torch.Generator().manual_seed(s))], ks=(4,))[4]
              for s in range(6)}
    assert len(values) == 1
    # each query: 19 tied others, 4 retrieved; P(no hit) = C(19 - h, 4) / C(19, 4), h = its class's others
    ref = (7 * (1 - math.comb(13, 4) / math.comb(19, 4)) + 13 * (1 - math.comb(7, 4) / math.comb(19, 4))) / 20
    assert values.pop() == pytest.approx(ref)


def test_integers_offset_by_2_62_stay_distinct():
    """Issue 32: integer embeddings offset by 2**62 collapsed into ties after the float32 cast."""
    base = torch.tensor([[0, 0], [1, 0], [5, 0], [6, 1], [20, 3]])
    y = torch.tensor([0, 0, 1, 1, 0])
    ref = expected_recall(base.tolist(), y.tolist(), (1, 2))
    assert recall_at_k(base + 2 ** 62, y, ks=(1, 2)) == pytest.approx(ref)
    assert recall_at_k(base, y, ks=(1, 2)) == pytest.approx(ref)
    assert torch.equal(knn(base + 2 ** 62, 2), knn(base, 2))
    assert map_at_r(base + 2 ** 62, y) == pytest.approx(expected_map_at_r(base.tolist(), y.tolist()))


def test_integer_columns_float64_cannot_hold_are_refused():
    x = torch.tensor([[-2 ** 62, 0], [2 ** 62, 1], [0, 2]])
    with pytest.raises(ValueError, match=r"^integer embeddings: column 0 spans \d+ > 2\*\*53, .*pass floats$"):
        recall_at_k(x, torch.tensor([0, 0, 1]))


@pytest.mark.parametrize("seed", range(4))
def test_against_every_ordering_of_the_ties(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, (8, 2), generator=g)                     # 9 points of a grid: many equal distances
    y = torch.randint(0, 3, (8,), generator=g)
    ks = (1, 2, 3, 8)
    ref = expected_recall(x.tolist(), y.tolist(), ks)
    assert recall_at_k(x.float(), y, ks=ks) == pytest.approx(ref, abs=1e-12)
    assert retrieval_metrics(x.float(), y, ks=ks, with_nmi=False) == pytest.approx(
        {**{f"R@{k}": v for k, v in ref.items()}, "MAP@R": expected_map_at_r(x.tolist(), y.tolist())}, abs=1e-12)


def _tied_data(seed, n=150, dim=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (n, dim), generator=g).float(), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_a_permutation_changes_nothing(metric):
    x, y = _tied_data(0)
    x = x + 0.5                                                      # no zero rows for the cosine
    base_r = recall_at_k(x, y, ks=(1, 2, 4, 8, 16), metric=metric)
    base_m = map_at_r(x, y, metric=metric)
    base_n = nmi(x, y)
    for s in range(4):
        p = torch.randperm(len(x), generator=torch.Generator().manual_seed(100 + s))
        assert recall_at_k(x[p], y[p], ks=(1, 2, 4, 8, 16), metric=metric) == base_r
        assert map_at_r(x[p], y[p], metric=metric) == base_m
        assert nmi(x[p], y[p]) == base_n
    assert 0.0 < base_r[1] < base_r[16] < 1.0
    assert recall_at_k(x, y, ks=(1, 2, 4, 8, 16), metric=metric, chunk_size=7) == base_r   # chunks of other widths
    assert map_at_r(x, y, metric=metric, chunk_size=7) == base_m


def test_differences_below_float32_resolution_still_rank():
    """The float32 search cannot see a difference of 1e-9 next to a spread of 1; the exact distances can."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0 + 1e-9, 0.0], [0.5, 3.0]], dtype=torch.float64)
    assert knn(x, 2)[0].tolist() == [1, 2]                            # 1 is nearer to 0 than 2, by 2e-9
    assert knn(x, 1)[2].tolist() == [1]
    y = torch.tensor([0, 1, 0, 1])
    p = torch.tensor([2, 0, 3, 1])
    # query 3 sees 0 and 1 at exactly 9.25 (a tie: R@1 1/2 for it), 2 just beyond; the others miss at K = 1
    assert recall_at_k(x, y, ks=(1, 2)) == recall_at_k(x[p], y[p], ks=(1, 2)) == {1: 0.125, 2: 0.75}


def test_knn_is_the_float64_order_with_ties_by_index():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 32, generator=g) + 3.0
    x[10] = x[20]                                                    # an exact duplicate: a tie for everyone
    x64 = x.double()
    d = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)          # (N, N) by differences, not the expansion
    d.fill_diagonal_(float("inf"))
    ref = d.argsort(dim=1, stable=True)[:, :10]
    for chunk in (64, 300, 1024):
        assert torch.equal(knn(x, 10, chunk_size=chunk), ref)


def test_poincare_ranking_counts_ties_too():
    z = torch.tensor([[0.0, 0.0], [0.3, 0.0], [-0.3, 0.0], [0.0, 0.6]])
    y = torch.tensor([0, 0, 1, 1])
    a = poincare_metrics(z, y, c=0.1, with_nmi=False)
    p = torch.tensor([3, 2, 1, 0])
    assert poincare_metrics(z[p], y[p], c=0.1, with_nmi=False) == a
    assert a["R@1"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)            # query 0: ±0.3 tie, one of its class
