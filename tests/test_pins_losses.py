"""The losses' defaults, edges and the multi-similarity path pinned by references written here: the map into
the ball for short vectors and at curvature 1, the ball's edge, the hyperbolic pair loss at other radii and
curvatures, the multi-similarity loss with its miner by loops, and how MetricLoss splits a batch."""
import math

import pytest
import torch

from bgtutorial.losses import HyperbolicPairLoss, MetricLoss, poincare_distance, to_poincare
from naive import naive_poincare_ball as ball, naive_poincare_distance as arcosh_distance


def pair_loss(emb, m, tau, c, r):
    """Hyp-ViT's pair loss by loops: each ordered pair of views, a cross-entropy averaged over the classes."""
    z = [ball(v, c, r) for v in emb.double().tolist()]
    p, total = len(z) // m, 0.0
    for i in range(m):
        for j in range(m):
            if i == j:
                continue
            for a in range(p):
                q = z[a * m + i]
                logits = [-arcosh_distance(q, z[b * m + j], c) / tau for b in range(p)]
                logits += [-arcosh_distance(q, z[b * m + i], c) / tau for b in range(p) if b != a]
                top = max(logits)
                total += (top + math.log(sum(math.exp(v - top) for v in logits)) - logits[a]) / p
    return total


def test_the_map_of_short_vectors_and_at_curvature_one():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(12, 4, generator=g).double() * torch.linspace(0.01, 0.9, 12)[:, None].double()
    for c in (0.1, 1.0):
        z = to_poincare(v, c, 2.3)
        for i in range(12):
            assert z[i].tolist() == pytest.approx(ball(v[i].tolist(), c), rel=1e-9, abs=1e-12)
    assert to_poincare(v)[3].tolist() == pytest.approx(ball(v[3].tolist()), rel=1e-9)   # defaults c = 0.1, r = 2.3


def test_points_stay_inside_the_ball_at_its_edge():
    """Without clipping a long vector maps to tanh(√c·50) ≈ 1 of the radius; it is pulled back to 0.999 of it."""
    c = 0.1
    z = to_poincare(torch.tensor([[50.0, 0.0], [0.0, 0.5]], dtype=torch.float64), c, None)
    assert float(z[0].norm()) == pytest.approx((1 - 1e-3) / math.sqrt(c), rel=1e-12)
    assert z[1].tolist() == pytest.approx(ball([0.0, 0.5], c, None), rel=1e-12)
    far = torch.tensor([[0.999, 0.0], [-0.999, 0.0]]) / math.sqrt(c)             # opposite ends of a diameter
    d = poincare_distance(far, far, c)
    assert math.isfinite(float(d[0, 1]))
    assert float(d[0, 1]) == pytest.approx(2 / math.sqrt(c) * math.atanh(1 - 1e-5), rel=1e-3)   # the cap


def test_poincare_distance_default_curvature():
    z = to_poincare(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).double())
    pts = z.tolist()
    d = poincare_distance(z, z)
    assert float(d[0, 2]) == pytest.approx(arcosh_distance(pts[0], pts[2]), rel=1e-6)


@pytest.mark.parametrize("tau, c, r", [(0.2, 0.1, 2.3), (0.5, 0.5, 1.0), (0.2, 0.1, None)])
def test_hyperbolic_pair_loss_at_other_radii_and_curvatures(tau, c, r):
    emb = 2 * torch.randn(9, 5, generator=torch.Generator().manual_seed(3))
    y = torch.arange(3).repeat_interleave(3)
    want = pair_loss(emb, 3, tau, c, r)
    assert float(HyperbolicPairLoss(3, tau, c, r)(emb, y)) == pytest.approx(want, rel=1e-4)
    if (tau, c, r) == (0.2, 0.1, 2.3):
        assert float(HyperbolicPairLoss(3)(emb, y)) == pytest.approx(want, rel=1e-4)     # Hyp-ViT's defaults


def test_hyperbolic_pair_loss_messages():
    with pytest.raises(ValueError, match=r"^reduction must be 'sum' \(Hyp-ViT\) or 'mean', got 'max'$"):
        HyperbolicPairLoss(3, reduction="max")
    with pytest.raises(ValueError, match=r"^batch of 7 is not P classes x m=3 samples$"):
        HyperbolicPairLoss(3)(torch.randn(7, 4), torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError) as err:
        HyperbolicPairLoss(3)(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 1, 1]))
    assert str(err.value) == "the hyperbolic pair loss expects m consecutive samples of one class (MPerClassBatchSampler)"


def multi_similarity(emb, y, alpha=2.0, beta=50.0, base=0.5, eps=0.1):
    """Wang et al.'s loss with their miner, by loops on cosine similarities, averaged over the anchors: a positive
    is kept when its similarity minus eps is below the anchor's hardest negative, a negative when its similarity
    plus eps is above the anchor's hardest positive."""
    x = [[a / math.sqrt(sum(b * b for b in row)) for a in row] for row in emb.tolist()]
    y = y.tolist()
    n, total = len(x), 0.0
    for i in range(n):
        s = [sum(a * b for a, b in zip(x[i], x[j])) for j in range(n)]
        pos = [j for j in range(n) if j != i and y[j] == y[i]]
        neg = [j for j in range(n) if y[j] != y[i]]
        if not pos or not neg:
            continue
        kept_pos = [j for j in pos if s[j] - eps < max(s[k] for k in neg)]
        kept_neg = [j for j in neg if s[j] + eps > min(s[k] for k in pos)]
        total += math.log(1 + sum(math.exp(-alpha * (s[j] - base)) for j in kept_pos)) / alpha
        total += math.log(1 + sum(math.exp(beta * (s[j] - base)) for j in kept_neg)) / beta
    return total / n


@torch.no_grad()
def test_multi_similarity_with_its_miner_matches_loops():
    g = torch.Generator().manual_seed(5)
    y = torch.arange(4).repeat_interleave(4)
    emb = torch.randn(16, 6, generator=g) + 1.5 * torch.randn(4, 6, generator=g)[y]
    loss = MetricLoss("multi_similarity", num_classes=4, embed_dim=6)
    assert float(loss(emb, y)) == pytest.approx(multi_similarity(emb, y), rel=1e-5)
    assert multi_similarity(emb, y) != pytest.approx(multi_similarity(emb, y, eps=1e9))   # the miner drops pairs here
    assert loss.proxy_parameters() == []


def test_proxy_parameters_without_a_module_loss_are_the_proxies():
    loss = MetricLoss("proxy_anchor", num_classes=5, embed_dim=8)
    params = loss.proxy_parameters()
    assert len(params) == 1 and params[0] is loss.loss.proxies and params[0].shape == (5, 8)
    both = MetricLoss("proxy_anchor", num_classes=5, embed_dim=8, separate_module_loss=True).proxy_parameters()
    assert len(both) == 2 and both[0] is not both[1]


@torch.no_grad()
def test_a_batch_of_plain_size_is_not_split():
    """batch_size equal to the batch: one loss over it (not a plain half and an empty module half)."""
    g = torch.Generator().manual_seed(6)
    emb, y = torch.randn(8, 4, generator=g), torch.arange(4).repeat_interleave(2)
    loss = MetricLoss("proxy_anchor", num_classes=4, embed_dim=4, plain_weight=0.3)
    whole = loss(emb, y, batch_size=8)
    assert loss.last_parts is None
    assert float(whole) == pytest.approx(float(loss.loss(emb, y)), rel=1e-6)
    with pytest.raises(ValueError) as err:
        MetricLoss("proxy_anchor", 4, 4, separate_module_loss=True)(emb, y)
    assert str(err.value) == "separate_module_loss needs batch_size, the size B of the plain half"


def test_metric_loss_defaults_and_bounds():
    """Kim et al.'s margin 0.1 and alpha 32; Hyp-ViT's tau 0.2, c 0.1, r 2.3 with m = 2; plain_weight in [0, 1]."""
    pa = MetricLoss("proxy_anchor", num_classes=4, embed_dim=8).loss
    assert (pa.margin, pa.alpha) == (0.1, 32.0)
    chosen = MetricLoss("proxy_anchor", num_classes=4, embed_dim=8, margin=0.2, alpha=16.0).loss
    assert (chosen.margin, chosen.alpha) == (0.2, 16.0)
    hyp = MetricLoss("hyperbolic", num_classes=4, embed_dim=8).loss
    assert (hyp.m, hyp.tau, hyp.c, hyp.clip_r, hyp.reduction) == (2, 0.2, 0.1, 2.3, "sum")
    assert MetricLoss("hyperbolic", 4, 8, pair_reduction="mean").loss.reduction == "mean"
    assert MetricLoss("proxy_anchor", 4, 8).last_parts is None
    for w in (0.0, 1.0):
        assert MetricLoss("proxy_anchor", 4, 8, plain_weight=w).plain_weight == w
    for w in (-0.01, 1.01):
        with pytest.raises(ValueError, match=rf"^plain_weight must be in \[0, 1\] or None, got {w}$"):
            MetricLoss("proxy_anchor", 4, 8, plain_weight=w)
    with pytest.raises(ValueError) as err:
        MetricLoss("triplet", 4, 8)
    assert str(err.value) == "unknown loss 'triplet'; choose one of proxy_anchor, multi_similarity, hyperbolic"


@torch.no_grad()
def test_the_halves_of_a_doubled_batch_are_scored_apart():
    """One loss over both halves (plain_weight None) logs each half's loss too; a weighted loss is
    a·L(plain) + (1 - a)·L(module), with the halves logged."""
    g = torch.Generator().manual_seed(7)
    emb, y = torch.randn(16, 4, generator=g), torch.arange(4).repeat(4)
    one = MetricLoss("proxy_anchor", num_classes=4, embed_dim=4)
    one(emb, y, batch_size=8)
    halves = [float(one.loss(emb[:8], y[:8])), float(one.loss(emb[8:], y[8:]))]
    assert [float(v) for v in one.last_parts] == pytest.approx(halves, rel=1e-6)
    weighted = MetricLoss("proxy_anchor", num_classes=4, embed_dim=4, plain_weight=0.3)
    total = float(weighted(emb, y, batch_size=8))
    plain, module = float(weighted.loss(emb[:8], y[:8])), float(weighted.loss(emb[8:], y[8:]))
    assert [float(v) for v in weighted.last_parts] == pytest.approx([plain, module], rel=1e-6)
    assert total == pytest.approx(0.3 * plain + 0.7 * module, rel=1e-6)


def _ce_by_hand(logits, y, shift=None):
    """Mean cross-entropy written out row by row: -log softmax(z + shift)[y]."""
    total = 0.0
    for row, t in zip(logits.tolist(), y.tolist()):
        z = [v + (0.0 if shift is None else math.log(shift[c])) for c, v in enumerate(row)]
        top = max(z)
        total += -(z[t] - top - math.log(sum(math.exp(v - top) for v in z)))
    return total / len(y)


def test_classifier_loss_halves_and_weights_by_hand():
    from bgtutorial.losses import ClassifierLoss

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    counts = [5, 1, 2]                                            # a count of 1 is a valid (tail) class
    for name, shift in (("cross_entropy", None), ("balanced_softmax", counts)):
        plain, module = _ce_by_hand(logits[:3], y[:3], shift), _ce_by_hand(logits[3:], y[3:], shift)
        loss = ClassifierLoss(name, counts if shift else None, plain_weight=0.3)
        assert float(loss(logits, y, batch_size=3)) == pytest.approx(0.3 * plain + 0.7 * module, rel=1e-5)
        assert [float(v) for v in loss.last_parts] == pytest.approx([plain, module], rel=1e-5)
        one = ClassifierLoss(name, counts if shift else None)
        assert float(one(logits, y, batch_size=3)) == pytest.approx(_ce_by_hand(logits, y, shift), rel=1e-5)
        assert float(one(logits[:3], y[:3], batch_size=3)) == pytest.approx(plain, rel=1e-5)   # not doubled
        assert one.last_parts is None
        assert float(one(logits, y)) == pytest.approx(_ce_by_hand(logits, y, shift), rel=1e-5)  # no batch size


def test_classifier_loss_messages():
    from bgtutorial.losses import ClassifierLoss, balanced_softmax_loss

    with pytest.raises(ValueError, match=r"^unknown classification loss 'hinge'; choose one of cross_entropy, "
                                         r"balanced_softmax$"):
        ClassifierLoss("hinge")
    with pytest.raises(ValueError, match=r"^the balanced_softmax loss needs class_counts, the training images per "
                                         r"class$"):
        ClassifierLoss("balanced_softmax")
    assert ClassifierLoss("cross_entropy").class_counts is None
    logits, y = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"^class_counts must be > 0 for every class \(log 0 would remove a class "
                                         r"from the softmax\)$"):
        balanced_softmax_loss(logits, y, [3, 0, 1])
    with pytest.raises(ValueError, match=r"^class_counts must hold one count per class \(3\), got shape \(2,\)$"):
        balanced_softmax_loss(logits, y, [3, 1])
