"""Hyperbolic scoring against an independent Poincaré reference (tests/naive.py: the map into the ball and the
arcosh form of the distance, in Python floats), never against the functions under test: the map, the
k nearest neighbours, the metrics, and a hyperbolic run's evaluation with an unshared module head.

Reference: the Poincaré ball of curvature -c holds the points with c|x|² < 1; a Euclidean vector v is
clipped to norm r, then sent in by the exponential map at 0, tanh(√c|v|) v / (√c|v|); the distance is
d(x, y) = arcosh(1 + 2c|x - y|² / ((1 - c|x|²)(1 - c|y|²))) / √c.
"""
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from bgtutorial.config import load_config
from bgtutorial.evaluate import evaluate, poincare_metrics
from bgtutorial.losses import poincare_distance, poincare_knn, to_poincare
from bgtutorial.train import build_model
from naive import naive_poincare_ball as ball, naive_poincare_distance as dist, naive_retrieval

C = 0.1


def ranked(points, i, key):
    return sorted((j for j in range(len(points)) if j != i), key=lambda j: key(points[i], points[j]))


def scores(points, labels, key):
    """R@1/2/4/8 and MAP@R by loops under a distance ``key``."""
    recall, map_r = naive_retrieval(len(points), labels, lambda i: ranked(points, i, key))
    return {**{f"R@{k}": v for k, v in recall.items()}, "MAP@R": map_r}


def cosine(x, y):
    return -sum(a * b for a, b in zip(x, y)) / math.sqrt(sum(a * a for a in x) * sum(b * b for b in y))


@pytest.fixture
def head():
    g = torch.Generator().manual_seed(4)
    y = torch.arange(6).repeat_interleave(4)
    v = 1.5 * torch.randn(6, 5, generator=g)[y] + torch.randn(24, 5, generator=g) * torch.linspace(0.3, 4, 24)[:, None]
    return v.double(), y


def test_the_map_into_the_ball_matches_the_reference(head):
    v, _ = head
    z = to_poincare(v, C, 2.3)
    for i in range(len(v)):
        assert z[i].tolist() == pytest.approx(ball(v[i].tolist()), abs=1e-12)
    assert to_poincare(v, C, None)[0].tolist() == pytest.approx(ball(v[0].tolist(), r=None), abs=1e-12)


def test_poincare_distance_and_knn_match_the_reference(head):
    v, _ = head
    z = to_poincare(v, C)
    pts = z.tolist()
    got = poincare_distance(z, z, C)
    for i in range(0, 24, 5):
        for j in range(24):
            if i != j:
                assert float(got[i, j]) == pytest.approx(dist(pts[i], pts[j]), rel=1e-6)
    nn = poincare_knn(z, 5, C, chunk_size=7)
    assert nn.tolist() == [ranked(pts, i, dist)[:5] for i in range(24)]


def test_poincare_metrics_match_the_reference_and_differ_from_cosine(head):
    v, y = head
    z = to_poincare(v, C)
    pts, labels = z.tolist(), y.tolist()
    want = scores(pts, labels, dist)
    got = poincare_metrics(z, y, C, with_nmi=False)
    assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-9)
    assert scores(pts, labels, cosine) != pytest.approx(want, abs=1e-9)      # the data tell the rankings apart


def test_a_hyperbolic_run_with_an_unshared_head_is_scored_by_poincare_distance(tmp_path):
    """evaluate() on a hyperbolic config: the head output and the module head's output on the plain features
    by Poincaré distance, the backbone features by cosine, each against the loops here."""
    cfg = load_config("digits", out=str(tmp_path), loss="hyperbolic", batch_module="batchformer",
                      shared_head=False, embed_dim=8, batch_size=20, m=4)
    torch.manual_seed(0)
    model, _ = build_model(cfg, 5)
    model.eval()
    images = torch.rand(24, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(6).repeat_interleave(4)
    got = evaluate(model, TensorDataset(images, labels), cfg=cfg, with_nmi=False)
    with torch.no_grad():
        feats = model.features(images).double()
        plain = [ball(row, cfg.curvature, cfg.clip_r) for row in model.head(feats.float()).double().tolist()]
        module = [ball(row, cfg.curvature, cfg.clip_r) for row in model.module_head(feats.float()).double().tolist()]
    y = labels.tolist()
    for prefix, key, pts in (("", dist, plain), ("module_head_", dist, module), ("feat_", cosine, feats.tolist())):
        want = scores(pts, y, key)
        assert {k: got[prefix + k] for k in want} == pytest.approx(want, abs=1e-6), prefix
    assert scores(module, y, cosine) != pytest.approx(scores(module, y, dist), abs=1e-6)
