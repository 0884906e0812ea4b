"""The reference recipes' training options: warm-up, BatchNorm and prefix freezing, gradient clipping,
random batches, pooling, head initialisation, input statistics, precision, validation classes,
Hyp-ViT's two-way evaluation and the presets' per-module tables."""
import math

import pytest
import torch
import torch.nn.functional as F

from bgtutorial.data import MPerClassBatchSampler, RandomBatchSampler
from bgtutorial.losses import poincare_knn, to_poincare
from bgtutorial.models import BATCH_MODULES, RetrievalNet, build_backbone, input_stats
from bgtutorial.precision import Precision, resolve_precision
from bgtutorial.checkpoint import load_checkpoint
from bgtutorial.config import load_config
from bgtutorial.data.splits import build_splits
from bgtutorial.evaluate import hyperbolic_metrics
from bgtutorial.train import build_model, set_trainable, train
from bgtutorial.utils import seed_everything
from naive import naive_poincare_distance

TINY = dict(views=1, epochs=2, batch_size=20, m=4, steps_per_epoch=2, eval_nmi=False, progress=False, embed_dim=16)


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------ freezing
def test_warm_up_freezes_exactly_the_backbone():
    cfg = load_config("digits", warm_epochs=2, epochs=4, batch_module="batchformer")
    model = RetrievalNet("smallcnn", 16, pretrained=False, batch_module="batchformer")
    names = {n for n, _ in model.named_parameters()}
    backbone = {n for n in names if n.startswith("backbone.")}
    for epoch in (0, 1):
        set_trainable(model, cfg, epoch)
        assert _trainable(model) == names - backbone          # head and batch module train
        assert any(n.startswith("batch_module.") for n in _trainable(model))
    for epoch in (2, 3):
        set_trainable(model, cfg, epoch)
        assert _trainable(model) == names


def test_bn_affine_and_prefix_freezing():
    model = RetrievalNet("resnet18", 16, pretrained=False)
    bn = {f"backbone.{m}.{p}" for m, mod in model.backbone.named_modules()
          if isinstance(mod, torch.nn.BatchNorm2d) for p in ("weight", "bias")}
    assert len(bn) == 40
    names = {n for n, _ in model.named_parameters()}
    set_trainable(model, load_config("digits", bn_freeze_affine=True), epoch=0)
    assert _trainable(model) == names - bn
    set_trainable(model, load_config("digits", frozen="backbone.conv1, backbone.layer1"), epoch=0)
    assert _trainable(model) == {n for n in names if not n.startswith(("backbone.conv1", "backbone.layer1"))}


def test_unknown_frozen_prefix_is_an_error(tmp_path):
    cfg = load_config("digits", out=str(tmp_path), frozen="backbone.patch_embed", **TINY)
    with pytest.raises(ValueError, match="matches no parameter"):
        train(cfg)


def test_warm_up_run_leaves_backbone_untouched_then_trains_it(tmp_path):
    cfg = load_config("digits", out=str(tmp_path), warm_epochs=1, **TINY)
    seed_everything(cfg.seed)                     # the same construction as train() does
    train_ds, _, _ = build_splits(cfg)
    initial, _ = build_model(cfg, num_classes=len(set(train_ds.targets)))
    snapshots = []
    train(cfg, callback=lambda h: snapshots.append(load_checkpoint(tmp_path / "last.pt")["model"]))
    after_warm, after_all = snapshots
    start = initial.state_dict()
    params = {n for n, _ in initial.named_parameters()}
    for name in params:
        if name.startswith("backbone."):
            assert torch.equal(after_warm[name], start[name]), name         # frozen during the warm-up
    assert not torch.equal(after_warm["head.weight"], start["head.weight"])
    assert any(not torch.equal(after_all[n], after_warm[n]) for n in params if n.startswith("backbone."))


# ------------------------------------------------------------------------------ clipping
def _head_change(tmp_path, name, **extra):
    cfg = load_config("digits", out=str(tmp_path / name), **{**TINY, "epochs": 1, "weight_decay": 0.0}, **extra)
    seed_everything(cfg.seed)
    train_ds, _, _ = build_splits(cfg)
    start, _ = build_model(cfg, num_classes=len(set(train_ds.targets)))
    train(cfg)
    end = load_checkpoint(tmp_path / name / "last.pt")["model"]
    return float((end["head.weight"] - start.state_dict()["head.weight"]).abs().max())


def test_gradient_clipping_really_clips(tmp_path):
    # Adam divides by the gradient's scale, so only a clip far below Adam's eps (1e-8) stalls the
    # update: a step then moves a weight by about lr·1e-4. Without clipping it moves by about lr.
    free = _head_change(tmp_path, "free")
    by_value = _head_change(tmp_path, "value", clip_grad_value=1e-13)
    by_norm = _head_change(tmp_path, "norm", clip_grad_norm=1e-13)
    assert free > 5e-4
    assert by_value < 1e-6 and by_norm < 1e-6


# ------------------------------------------------------------------------------ batches
def test_random_batches_are_seeded_permutations():
    s = RandomBatchSampler(50, 10, seed=3)
    s.set_epoch(2)
    batches = list(s)
    assert len(batches) == 5 and sorted(i for b in batches for i in b) == list(range(50))   # one pass, no repeat
    again = RandomBatchSampler(50, 10, seed=3)
    again.set_epoch(2, start_batch=3)
    assert list(again) == batches[3:]                              # resume at the exact batch
    s.set_epoch(3)
    assert list(s) != batches                                      # a new epoch reshuffles
    halves = [RandomBatchSampler(50, 10, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for h in halves:
        h.set_epoch(2)
    assert [a + b for a, b in zip(*map(list, halves))] == batches  # ranks split every global batch
    long = RandomBatchSampler(50, 10, num_batches=12, seed=0)
    assert len(list(long)) == 12


def test_random_batches_are_refused_with_a_batch_module():
    with pytest.raises(ValueError, match="positives"):
        load_config("digits", sampler="random", batch_module="bgformer")
    cfg = load_config("digits", sampler="random", **TINY)
    assert cfg.sampler == "random"


def test_random_batch_training_runs(tmp_path):
    h = train(load_config("digits", out=str(tmp_path), sampler="random", **TINY))
    assert len(h["steps"]) == 4 and all(math.isfinite(s["loss"]) for s in h["steps"])


# ------------------------------------------------------------------------------ backbone and head
def test_avgmax_pooling_sums_average_and_max_of_the_last_map():
    net, _ = build_backbone("resnet18", pretrained=False, pooling="avgmax")
    net.eval()
    maps = {}
    net.layer4.register_forward_hook(lambda m, i, o: maps.update(out=o))
    x = torch.randn(2, 3, 64, 64)
    feats = net(x)
    ref = torch.stack([torch.stack([maps["out"][b, c].mean() + maps["out"][b, c].max() for c in range(512)])
                       for b in range(2)])
    torch.testing.assert_close(feats, ref)
    with pytest.raises(ValueError, match="ResNet"):
        build_backbone("smallcnn", pretrained=False, pooling="avgmax")


def test_head_initialisations():
    torch.manual_seed(0)
    k = RetrievalNet("resnet50", 512, pretrained=False, head_init="kaiming_fanout").head
    assert float(k.weight.detach().std()) == pytest.approx(math.sqrt(2 / 512), rel=0.02)   # fan-out = 512 outputs
    assert torch.count_nonzero(k.bias) == 0
    o = RetrievalNet("smallcnn", 128, pretrained=False, head_init="orthogonal").head   # (128, 256)
    torch.testing.assert_close(o.weight @ o.weight.T, torch.eye(128), atol=1e-5, rtol=0)
    assert torch.count_nonzero(o.bias) == 0


def test_proxies_follow_kaiming_fan_out():
    torch.manual_seed(0)
    _, loss = build_model(load_config("digits", embed_dim=512), num_classes=100)
    proxies = loss.proxy_parameters()[0]
    assert proxies.shape == (100, 512)
    assert float(proxies.detach().std()) == pytest.approx(math.sqrt(2 / 100), rel=0.02)   # Proxy-Anchor losses.py L30-31


def test_input_statistics_come_from_the_checkpoints_metadata():
    assert input_stats("vit_s16") == ((0.5,) * 3, (0.5,) * 3)                     # timm's pretrained config
    mean, std = input_stats("resnet50")
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))


# ------------------------------------------------------------------------------ precision
def test_precision_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (7, 5))    # a T4
    assert resolve_precision("auto", gpu) == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (9, 0))    # an H100
    assert resolve_precision("auto", gpu) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", cpu)


@pytest.mark.parametrize("method", list(BATCH_MODULES))
@pytest.mark.parametrize("loss", ["proxy_anchor", "multi_similarity", "hyperbolic"])
def test_bf16_training_step_for_every_method_and_loss(tmp_path, method, loss):
    cfg = load_config("digits", out=str(tmp_path), precision="bf16", batch_module=method, loss=loss,
                      **{**TINY, "epochs": 1, "steps_per_epoch": 1})
    h = train(cfg)
    assert h["precision"] == "bf16" and math.isfinite(h["steps"][0]["loss"])
    state = load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())   # weights stay fp32


def test_fp16_scaler_path_trains_and_checkpoints_its_scale(tmp_path):
    h = train(load_config("digits", out=str(tmp_path), precision="fp16", batch_module="bgformer",
                          **{**TINY, "epochs": 1}))
    assert h["precision"] == "fp16" and all(math.isfinite(s["loss"]) for s in h["steps"])
    assert load_checkpoint(tmp_path / "last.pt")["scaler"]["scale"] > 0


def test_fp16_scaler_skips_a_step_whose_gradients_overflowed():
    layer = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    prec = Precision("fp16", torch.device("cpu"))
    before = layer.weight.detach().clone()
    loss = (layer(torch.ones(1, 3)) * float("inf")).sum()
    prec.backward(loss)
    assert prec.step(opt) is False
    assert torch.equal(layer.weight, before)
    opt.zero_grad()
    prec.backward(layer(torch.ones(1, 3)).sum())
    assert prec.step(opt) is True and not torch.equal(layer.weight, before)


# ------------------------------------------------------------------------------ evaluation
def test_poincare_knn_matches_brute_force():
    z = to_poincare(torch.randn(30, 5, generator=torch.Generator().manual_seed(0)), 0.1)
    got = poincare_knn(z, 4, 0.1, chunk_size=7)
    pts = z.double().tolist()

    for i in range(30):
        d = [(naive_poincare_distance(pts[i], pts[j]), j) for j in range(30) if j != i]
        assert got[i].tolist() == [j for _, j in sorted(d)[:4]]


def test_hyperbolic_metrics_report_both_of_hyp_vits_evaluations():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(6).repeat_interleave(5)
    centres = torch.randn(6, 8, generator=g)
    head = centres[y] * 3 + 0.1 * torch.randn(30, 8, generator=g)      # tight classes in the head output
    feats = torch.randn(30, 16, generator=g)                              # features that know nothing
    out = hyperbolic_metrics(head, feats, y, c=0.1, clip_r=2.3, with_nmi=False)
    assert out["R@1"] == 1.0 and out["feat_R@1"] < 0.6
    assert {"R@1", "R@8", "MAP@R", "feat_R@1", "feat_MAP@R"} <= set(out)


def test_a_hyperbolic_run_is_analysed_the_way_its_history_scores_it(tmp_path):
    """embed_run and head_metrics score a hyperbolic run by Poincaré distance on the head output (and cosine on
    the backbone feature), as train() did for its last epoch; the module head of an unshared run too."""
    from bgtutorial.experiments import embed_run, head_metrics
    from bgtutorial.evaluate import poincare_metrics

    cfg = load_config("digits", out=str(tmp_path), loss="hyperbolic", batch_module="bgformer", shared_head=False,
                      **{**TINY, "epochs": 1, "eval_nmi": True})
    last = train(cfg)["epochs"][-1]
    emb, labels, _ = embed_run(tmp_path)
    assert emb.norm(dim=1).max() < cfg.curvature ** -0.5                # points of the ball ...
    assert (emb.norm(dim=1) - 1).abs().max() > 1e-3                      # ... not the unit vectors cosine ranks
    again = poincare_metrics(emb, labels, cfg.curvature)
    for k in ("R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI"):
        assert again[k] == pytest.approx(last[k], abs=1e-6), k
    heads = head_metrics(tmp_path, with_nmi=True)
    assert heads["plain head"] == pytest.approx({k: v for k, v in last.items()
                                                 if k in heads["plain head"]}, abs=1e-6)
    assert {"R@1", "MAP@R", "NMI", "feat_R@1", "feat_MAP@R"} <= set(heads["plain head"])
    assert heads["module head"] == pytest.approx({k.removeprefix("module_head_"): v for k, v in last.items()
                                                  if k.startswith("module_head_")}, abs=1e-6)
    assert set(heads["module head"]) == {"R@1", "R@2", "R@4", "R@8", "MAP@R"}


# ------------------------------------------------------------------------------ selection
def test_validation_classes_are_held_out_and_select_best_val(tmp_path):
    cfg = load_config("digits", out=str(tmp_path), val_classes=2, **{**TINY, "batch_size": 12})
    train_ds, val_ds, test_ds = build_splits(cfg)
    assert set(train_ds.targets) == {0, 1, 2} and set(val_ds.targets) == {3, 4}
    assert not set(val_ds.targets) & set(train_ds.targets)
    h = train(cfg)
    assert all("val" in e for e in h["epochs"]) and "initial_val" in h
    best = load_checkpoint(tmp_path / "best_val.pt")
    assert best["val"]["R@1"] == max(e["val"]["R@1"] for e in h["epochs"])
    assert not (tmp_path / "best.pt").exists()


def test_eval_every_evaluates_the_last_epoch(tmp_path):
    h = train(load_config("digits", out=str(tmp_path), eval_every=2, **{**TINY, "epochs": 3, "steps_per_epoch": 1}))
    assert ["R@1" in e for e in h["epochs"]] == [False, True, True]


# ------------------------------------------------------------------------------ presets
def test_module_tables_apply_to_their_module_only():
    plain = load_config("cub-vits")
    bgf = load_config("cub-vits-bgformer")
    via_override = load_config("cub-vits", batch_module="bgformer")       # how experiments.compare asks
    assert plain.module_lr == 0 and plain.plain_weight < 0 and plain.module_kwargs == {}
    for cfg in (bgf, via_override):
        assert cfg.module_lr == pytest.approx(8.5e-4) and cfg.plain_weight == pytest.approx(0.01)
        assert cfg.module_kwargs == {"k": 30, "lam": 0.3, "depth": 2, "dropout": 0.0}
    assert load_config("cub-vits-bgformer", plain_weight=0.5).plain_weight == 0.5   # overrides win
    assert load_config("cub-resnet50-batchformer").module_lr_mult == pytest.approx(0.1)
    assert load_config("cub-resnet50-bgformer").module_lr_mult == 1.0


def test_curves_skip_epochs_that_were_not_evaluated():
    from bgtutorial.plots.curves import plot_history

    h = {"initial": {"R@1": 0.1, "MAP@R": 0.01}, "steps": [{"loss": 1.0}, {"loss": 0.5}],
         "epochs": [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5, "R@1": 0.4, "MAP@R": 0.1}]}
    fig = plot_history(h)
    xs, ys = fig.axes[1].lines[0].get_data()
    assert list(xs) == [0, 2] and list(ys) == [0.1, 0.4]
