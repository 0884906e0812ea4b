"""The hyperbolic (Hyp-ViT) loss against loop references, and the ViT backbone with random weights."""
import math

import pytest
import torch
import torch.nn.functional as F

from bgtutorial.losses import HyperbolicPairLoss, MetricLoss, poincare_distance, to_poincare
from bgtutorial.models import TIMM_MODELS, RetrievalNet, build_backbone
from naive import naive_poincare_distance


def mobius_add(a, b, c):
    ab, a2, b2 = float(a @ b), float(a @ a), float(b @ b)
    return ((1 + 2 * c * ab + c * b2) * a + (1 - c * a2) * b) / (1 + 2 * c * ab + c ** 2 * a2 * b2)


def test_poincare_distance_matches_mobius_formula():
    c = 0.1
    x = to_poincare(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), c)
    y = to_poincare(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), c)
    d = poincare_distance(x, y, c)
    for i in range(5):
        for j in range(3):
            ref = 2 / math.sqrt(c) * math.atanh(math.sqrt(c) * float(mobius_add(-x[i], y[j], c).norm()))
            assert float(d[i, j]) == pytest.approx(ref, rel=1e-4)
    # d(x, x) = 0 up to float32 cancellation: the expanded squared norm of (-x)⊕x is a difference of
    # O(1) terms, so it keeps a rounding residue of order 1e-7; the square root turns that into ~3e-4,
    # and 2/√c ≈ 6.3 into ~2e-3 (2.6e-3 measured with one BLAS thread, below 2e-3 with two)
    assert torch.allclose(poincare_distance(x, x, c).diagonal(), torch.zeros(5), atol=5e-3)


def test_to_poincare_stays_in_the_ball_and_clips():
    c, r = 0.1, 2.3
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(0)) * 100     # norms far above r
    p = to_poincare(x, c=c, clip_r=r)
    assert (p.norm(dim=1) < 1 / math.sqrt(c)).all()
    # clipping: every long vector lands at the image of radius r, tanh(√c·r)/√c, same direction;
    # without clipping they would crowd at the ball's edge (1/√c·(1-1e-3)), a different radius
    expected = math.tanh(math.sqrt(c) * r) / math.sqrt(c)
    torch.testing.assert_close(p.norm(dim=1), torch.full((20,), expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(F.normalize(p, dim=1), F.normalize(x, dim=1))
    unclipped = to_poincare(x, c=c, clip_r=None).norm(dim=1)
    assert (unclipped > expected + 0.5).all()
    # a vector shorter than r is not clipped: its radius is tanh(√c|x|)/√c
    short = F.normalize(torch.randn(1, 8), dim=1) * 1.5
    assert float(to_poincare(short, c=c, clip_r=r).norm()) == pytest.approx(math.tanh(math.sqrt(c) * 1.5) / math.sqrt(c),
                                                                             rel=1e-5)
    small = torch.full((1, 8), 1e-3)
    torch.testing.assert_close(to_poincare(small, 0.1), small, rtol=1e-3, atol=1e-6)   # expmap0 ≈ id near 0


def test_hyperbolic_loss_matches_loop_reference():
    m, P, E, tau, c = 3, 4, 6, 0.2, 0.1
    emb = torch.randn(P * m, E, generator=torch.Generator().manual_seed(2))
    y = torch.arange(P).repeat_interleave(m)
    z = to_poincare(emb, c)
    total, pairs = 0.0, 0
    for i in range(m):
        for j in range(m):
            if i == j:
                continue
            for a in range(P):                      # class a's view i must find class a's view j
                q = z[a * m + i]
                cands = [z[b * m + j] for b in range(P)] + [z[b * m + i] for b in range(P) if b != a]
                logits = [-naive_poincare_distance(q.tolist(), k.tolist(), c) / tau for k in cands]
                top = max(logits)
                total += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[a]
            pairs += 1
    # Hyp-ViT: each pair's cross-entropy is a mean over the P rows, the pairs are summed
    assert float(HyperbolicPairLoss(m, tau, c)(emb, y)) == pytest.approx(total / P, rel=1e-4)
    assert float(HyperbolicPairLoss(m, tau, c, reduction="mean")(emb, y)) == pytest.approx(total / (P * pairs), rel=1e-4)


def test_hyperbolic_loss_rewards_tight_classes_and_has_finite_gradients():
    y = torch.arange(4).repeat_interleave(3)
    centres = torch.randn(4, 8) * 3
    tight = centres[y] + 0.01 * torch.randn(12, 8)
    loose = torch.randn(12, 8) * 3
    loss = HyperbolicPairLoss(3)
    assert loss(tight, y) < loss(loose, y)
    e = loose.clone().requires_grad_(True)
    loss(e, y).backward()
    assert torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0


def test_hyperbolic_loss_errors_and_halves():
    with pytest.raises(ValueError, match="m >= 2"):
        HyperbolicPairLoss(1)
    with pytest.raises(ValueError, match="consecutive"):
        HyperbolicPairLoss(2)(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    ml = MetricLoss("hyperbolic", 4, 8, m=2)
    e, y = torch.randn(8, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    doubled = ml(torch.cat([e, 2 * e]), torch.cat([y, y]), batch_size=8)
    torch.testing.assert_close(doubled, 0.5 * ml(e, y) + 0.5 * ml(2 * e, y))


def test_vit_backbone_with_random_weights():
    net, dim = build_backbone("vit_s16", pretrained=False)
    assert dim == 384
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 224, 224)).shape == (1, 384)


def test_vit_pretrained_weights_resolve_through_timm_api():
    import timm

    cfg = timm.models.get_pretrained_cfg(TIMM_MODELS["vit_s16"])     # metadata only, no download
    assert "21k" in TIMM_MODELS["vit_s16"] and (cfg.hf_hub_id or cfg.url)


def test_raw_embeddings_in_training_normalised_at_test():
    net = RetrievalNet("smallcnn", embed_dim=8, pretrained=False, normalize=False)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 0, 1, 1])
    e, _ = net.train()(x, y)
    assert not torch.allclose(e.norm(dim=1), torch.ones(4))
    assert torch.allclose(net.eval()(x).norm(dim=1), torch.ones(4), atol=1e-5)
