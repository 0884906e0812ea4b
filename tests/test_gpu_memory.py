"""The GPU-memory check of notebook 05 (decided on given numbers, no GPU needed) and the CPU estimate
of a training step's memory that feeds it."""
import pytest
import torch

from bgtutorial.gpucheck import batch_that_fits, estimate_train_gib
from bgtutorial.config import load_config
from bgtutorial.utils import check_gpu_memory


def test_check_gpu_memory_decides_on_given_numbers(capsys):
    assert check_gpu_memory(36.0, "tier 2", total_gib=79.1) is True
    assert "fits" in capsys.readouterr().out
    assert check_gpu_memory(36.0, "tier 2", total_gib=14.7, hint="batch_size=369 fits") is False
    out = capsys.readouterr().out
    for needed in ("36.0 GiB", "14.7 GiB", "batch_size", "precision", "RUN_TIER2=False", "batch_size=369 fits"):
        assert needed in out
    assert check_gpu_memory(36.0, "tier 2", total_gib=36.0) is True            # exactly enough is enough
    with pytest.raises(ValueError):
        check_gpu_memory(0, "tier 2", total_gib=10)


def test_check_gpu_memory_without_cuda_says_so(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_gpu_memory(2.0, "tier 2") is False
    assert "no" in capsys.readouterr().out.lower()


def _naive_kept_bytes(cfg, n_images):
    """Bytes of every tensor autograd saves in one fp32 forward of a hand-built copy of the smoke network,
    counted by walking the graph (not by hooks): an independent reference for the estimate's slope."""
    from bgtutorial.losses import MetricLoss
    from bgtutorial.train import build_net

    torch.manual_seed(0)
    net = build_net(cfg, pretrained=False).train()
    crit = MetricLoss(cfg.loss, 2, cfg.embed_dim, m=cfg.m)
    x = torch.randn(n_images, 3, cfg.image_size, cfg.image_size)
    y = torch.arange(n_images // cfg.m).repeat_interleave(cfg.m)
    emb, y2 = net(x, y)
    loss = crit(emb, y2, batch_size=n_images)
    params = {p.untyped_storage().data_ptr() for p in [*net.parameters(), *crit.parameters()]}
    seen, stack, visited = {}, [loss.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in visited:
            continue
        visited.add(fn)
        for name in dir(fn):
            if name.startswith("_saved_"):
                try:
                    v = getattr(fn, name)
                except RuntimeError:
                    continue
                for t in (v if isinstance(v, (tuple, list)) else [v]):
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
                        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        stack.extend(f for f, _ in fn.next_functions)
    return sum(seen.values())


def test_estimate_scales_with_the_batch_and_matches_a_graph_walk():
    cfg = load_config("smoke")
    est = estimate_train_gib(cfg, precision="fp32")
    naive = (_naive_kept_bytes(cfg, 2 * cfg.m) - _naive_kept_bytes(cfg, cfg.m)) / cfg.m / 2**20
    assert naive > 0 and est["per_image_mib"] == pytest.approx(naive, rel=0.05)
    n_params = sum(p.numel() for p in __import__("bgtutorial.train", fromlist=["build_net"]).build_net(cfg).parameters())
    assert est["params_gib"] >= 16 * n_params / 2**30                       # weights, grads, two Adam moments
    big = estimate_train_gib(cfg, batch_size=4 * cfg.batch_size, precision="fp32")
    grown = (big["total_gib"] - est["total_gib"]) / est["margin"]            # linear in the batch
    assert grown == pytest.approx(3 * cfg.batch_size * est["per_image_mib"] / 1024, rel=1e-6)
    half = estimate_train_gib(cfg, precision="bf16")
    assert half["per_image_mib"] < 0.9 * est["per_image_mib"]               # 16-bit activations are smaller


def test_batch_that_fits_inverts_the_estimate():
    est = {"per_image_mib": 32.0, "fixed_gib": 0.05, "params_gib": 0.3, "margin": 1.25, "context_gib": 0.5}
    b = batch_that_fits(est, 40.0, m=9)
    assert b % 9 == 0
    total = lambda n: est["margin"] * (est["params_gib"] + est["fixed_gib"] + n * est["per_image_mib"] / 1024) \
        + est["context_gib"]
    assert total(b) <= 40.0 < total(b + 9)
    assert batch_that_fits(est, 0.6, m=9) == 0
