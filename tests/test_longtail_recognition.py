"""Long-tailed recognition (preset ``glyphs-lt``): the split, the balanced test split, Balanced Softmax,
BatchFormer's shared classifier, the Many / Medium / Few metrics and one tiny run end to end."""
import json
import math
from collections import Counter

import pytest
import torch

from bgtutorial import longtail
from bgtutorial.cli import main as train_main
from bgtutorial.config import load_config
from bgtutorial.data.glyphs_lt import GlyphsRecognition
from bgtutorial.data.splits import build_splits
from bgtutorial.losses import ClassifierLoss, balanced_softmax_loss
from bgtutorial.train import build_model

TINY = dict(glyph_classes=12, glyph_per_class=24, glyph_test_per_class=3, progress=False)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("glyphs-lt")
    cfg = load_config("glyphs-lt", data_root=str(root), **TINY)
    return cfg, build_splits(cfg)


def test_training_split_follows_the_exponential_profile(splits):
    cfg, (train, val, _) = splits
    assert val is None
    counts = Counter(train.targets)
    n_classes, n_max, rho = cfg.glyph_classes, cfg.glyph_per_class, cfg.imbalance
    expected = []                       # n_r = n_max * rho^(-r / (C - 1)), at least 2, by rank r
    for r in range(n_classes):
        expected.append(max(2, int(round(n_max * rho ** (-r / (n_classes - 1))))))
    assert sorted(counts.values(), reverse=True) == expected
    assert set(counts) == set(range(n_classes))        # every class trains, the tail too


def test_test_split_is_balanced_and_rendered_from_other_seeds(splits, tmp_path):
    cfg, (train, _, test) = splits
    assert Counter(test.targets) == {c: cfg.glyph_test_per_class for c in range(cfg.glyph_classes)}
    full_train = GlyphsRecognition("train", cfg.glyph_per_class, cfg.data_seed, num_classes=cfg.glyph_classes,
                                   root=cfg.data_root, progress=False, test_per_class=cfg.glyph_test_per_class)
    assert test.classes == full_train.classes                              # the same closed set of classes
    assert not set(test.render_seeds) & set(full_train.render_seeds)      # no render seed in common
    train_pixels = {bytes(img.numpy()) for img in full_train.images}
    assert not any(bytes(img.numpy()) in train_pixels for img in test.images)   # hence no image in common


def _reference_balanced_softmax(logits, targets, counts):
    """CE of the logits shifted by log n_c, written out one row at a time."""
    total = 0.0
    for row, y in zip(logits.tolist(), targets.tolist()):
        shifted = [z + math.log(n) for z, n in zip(row, counts)]
        top = max(shifted)
        log_norm = top + math.log(sum(math.exp(s - top) for s in shifted))
        total += log_norm - shifted[y]
    return total / len(targets)


def test_balanced_softmax_is_cross_entropy_shifted_by_the_log_prior():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 5, generator=g) * 3
    targets = torch.tensor([0, 1, 2, 3, 4, 4, 3, 0, 2])
    counts = [300, 57, 11, 4, 3]
    got = float(balanced_softmax_loss(logits, targets, counts))
    assert got == pytest.approx(_reference_balanced_softmax(logits, targets, counts), rel=1e-5)
    # a uniform prior shifts every logit alike: plain cross-entropy; a scaled prior is the same prior
    assert float(balanced_softmax_loss(logits, targets, [7] * 5)) == pytest.approx(
        _reference_balanced_softmax(logits, targets, [1] * 5), rel=1e-5)
    assert float(balanced_softmax_loss(logits, targets, [10 * n for n in counts])) == pytest.approx(got, rel=1e-5)
    with pytest.raises(ValueError, match="class_counts"):
        balanced_softmax_loss(logits, targets, [1, 2, 3])
    with pytest.raises(ValueError, match="class_counts"):
        balanced_softmax_loss(logits, targets, [1, 0, 3, 4, 5])


def test_classifier_loss_averages_a_doubled_batch_over_both_halves():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(8, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    counts = [40, 9, 3, 2]
    loss = ClassifierLoss("balanced_softmax", counts)
    total = float(loss(logits, y, batch_size=4))
    plain = _reference_balanced_softmax(logits[:4], y[:4], counts)
    module = _reference_balanced_softmax(logits[4:], y[4:], counts)
    assert total == pytest.approx((plain + module) / 2, rel=1e-5)
    assert [float(p) for p in loss.last_parts] == pytest.approx([plain, module], rel=1e-5)
    assert loss.proxy_parameters() == []
    with pytest.raises(ValueError, match="class_counts"):
        ClassifierLoss("balanced_softmax")


def _tiny_model(**overrides):
    cfg = load_config("glyphs-lt-batchformer", module_kwargs={"dropout": 0.0}, **TINY, **overrides)
    return cfg, *build_model(cfg, num_classes=6, class_counts=[9, 7, 5, 4, 3, 2])


def test_batchformer_shares_the_classifier_and_is_off_at_test_time():
    torch.manual_seed(0)
    cfg, model, _ = _tiny_model()
    assert model.module_head is None and model.head.out_features == 6
    x, y = torch.rand(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4])
    model.train()
    logits, y2 = model(x, y)
    assert logits.shape == (10, 6) and y2.tolist() == y.tolist() * 2
    with torch.no_grad():
        f = model.features(x)
        w, b = model.head.weight, model.head.bias           # one classifier for both halves
        assert torch.allclose(logits[:5], f @ w.T + b, atol=1e-5)
        assert torch.allclose(logits[5:], model.batch_module(f) @ w.T + b, atol=1e-5)
    model.eval()

    def refuse(*_):
        raise AssertionError("the batch module ran at test time")

    model.batch_module.forward = refuse
    dataset = torch.utils.data.TensorDataset(torch.rand(6, 3, 32, 32), torch.arange(6))
    scored = longtail.classification_metrics(model, dataset, [9, 7, 5, 4, 3, 2], batch_size=4)
    assert set(scored) == {"top1", "top1_many", "top1_medium", "top1_few"}


def test_group_metrics_against_a_loop():
    counts = [500, 150, 101, 100, 60, 20, 19, 5]       # the literature's thresholds: > 100, 20-100, < 20
    assert longtail.shot_groups(counts) == ["many"] * 3 + ["medium"] * 3 + ["few"] * 2
    labels = torch.tensor([c for c in range(8) for _ in range(4)])
    preds = labels.clone()
    preds[[1, 2, 5, 13, 30, 31]] = 0                   # wrong for classes 1, 3 and 7 (twice)
    preds[[0]] = 3
    per_class = [sum(int(preds[i] == labels[i]) for i in range(32) if labels[i] == c) / 4 for c in range(8)]
    got = longtail.top1_metrics(preds, labels, counts)
    assert got["top1"] == pytest.approx(sum(int(p == t) for p, t in zip(preds, labels)) / 32)
    assert got["top1_many"] == pytest.approx(sum(per_class[:3]) / 3)
    assert got["top1_medium"] == pytest.approx(sum(per_class[3:6]) / 3)
    assert got["top1_few"] == pytest.approx(sum(per_class[6:]) / 2)
    # a head class of 100 images or fewer: thresholds scaled by n_max / 500; an empty group is None
    assert longtail.shot_thresholds(50) == pytest.approx((10.0, 2.0))
    assert longtail.top1_metrics(torch.tensor([0, 1]), torch.tensor([0, 1]), [50, 30])["top1_few"] is None


def test_recognition_and_retrieval_do_not_mix():
    with pytest.raises(ValueError, match="glyphs-lt"):
        load_config("glyphs", loss="balanced_softmax")
    with pytest.raises(ValueError, match="glyphs-lt"):
        load_config("glyphs-lt", loss="proxy_anchor")
    with pytest.raises(ValueError, match="val_classes"):
        load_config("glyphs-lt", val_classes=4)


def test_one_tiny_run_of_the_preset_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--preset", "glyphs-lt-batchformer", "--out", str(out), "--data_root", str(tmp_path / "data"),
            "--glyph_classes", "12", "--glyph_per_class", "120", "--glyph_test_per_class", "3", "--epochs", "2",
            "--batch_size", "16", "--loss", "balanced_softmax", "--progress", "false"]
    assert train_main(argv) == 0
    h = json.loads((out / "history.json").read_text())
    assert h["config"]["imbalance"] == 100.0 and h["config"]["batch_module"] == "batchformer"
    assert sum(h["class_counts"]) == 120 + sum(max(2, round(120 * 100 ** (-r / 11))) for r in range(1, 12))
    for record in h["epochs"]:
        assert {"top1", "top1_many", "top1_medium", "top1_few"} <= set(record)
        assert 0.0 <= record["top1"] <= 1.0
    assert "loss_plain" in h["epochs"][-1]               # the doubled batch's plain half, logged apart
    from bgtutorial.experiments import load_run_model    # the trained module, for the mechanism's measures

    cfg, net = load_run_model(out)
    assert net.head.out_features == 12 and net.batch_module is not None
    counts = h["class_counts"]
    groups = longtail.shot_groups(counts)
    y = torch.tensor([groups.index("many"), groups.index("few"), groups.index("medium"), groups.index("few")])
    got = longtail.head_tail_coupling(net, torch.rand(4, 3, 32, 32), y, counts)
    assert got["attention_uniform"] == 0.25 and got["grad_many_to_few"] > 0


def test_study_tables_read_the_paired_rule():
    def hist(top1):
        return {"epochs": [{"top1": top1, "top1_many": top1, "top1_medium": top1, "top1_few": top1 / 2}]}

    base = [0.30, 0.32, 0.35]
    study = {"ce": [hist(v) for v in base], "ce-batchformer": [hist(v + 0.05) for v in base]}
    table = longtail.lt_tables(study)
    assert "| ce-batchformer − ce | +0.050 [+0.050, +0.050] (supported)" in table
    assert "| ce | 0.323 ± 0.025 |" in table


def test_shipped_study_that_is_not_shipped_exits_2(capsys, tmp_path):
    assert longtail.main(["--shipped", "--seeds", "9999", "--conditions", "ce", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no shipped history glyphs-lt-ce-seed9999-imbalance100.json") and "\n" not in err


def test_study_trains_publishes_and_reads_back_the_shipped_histories(tmp_path, monkeypatch, capsys):
    from bgtutorial import experiments

    monkeypatch.setattr(experiments, "PUBLISHED", tmp_path / "published")
    tiny = dict(TINY, epochs=1, batch_size=16, data_root=str(tmp_path / "data"))
    trained = longtail.lt_study(tmp_path / "runs", seeds=(0, 1), conditions=("ce", "bsce-batchformer"),
                                publish="test", **tiny)
    shipped = longtail.lt_study(tmp_path / "elsewhere", seeds=(0, 1), conditions=("ce", "bsce-batchformer"),
                                shipped=True, **tiny)
    for condition in ("ce", "bsce-batchformer"):
        assert [h["epochs"][-1]["top1"] for h in shipped[condition]] == [h["epochs"][-1]["top1"]
                                                                        for h in trained[condition]]
        assert all("steps" not in h and h["published"]["command"] == "test" for h in shipped[condition])
    assert shipped["bsce-batchformer"][1]["config"]["loss"] == "balanced_softmax"
    assert sorted(p.name for p in (tmp_path / "published").iterdir())[0] == "glyphs-lt-bsce-batchformer-seed0-imbalance100.json"


def test_head_tail_coupling_reads_attention_and_cross_sample_gradient():
    torch.manual_seed(0)
    _, model, _ = _tiny_model()
    counts = [200, 150, 50, 30, 5, 3]                  # classes 0, 1 Many; 2, 3 Medium; 4, 5 Few
    x, y = torch.rand(8, 3, 32, 32), torch.tensor([0, 1, 0, 2, 3, 4, 5, 4])
    got = longtail.head_tail_coupling(model, x, y, counts)
    assert got["attention_uniform"] == 3 / 8
    assert 0.0 < got["attention_few_to_many"] < 1.0 and got["grad_many_to_few"] > 0 and got["grad_self"] > 0
    layer = model.batch_module.layers[0]
    with torch.no_grad():
        layer.qkv.weight.zero_()                       # equal scores: every row attends uniformly
        layer.qkv.bias.zero_()
    uniform = longtail.head_tail_coupling(model, x, y, counts)
    assert uniform["attention_few_to_many"] == pytest.approx(3 / 8)
    with torch.no_grad():
        layer.proj.weight.zero_()                      # no attention output: only per-sample paths are left
    assert longtail.head_tail_coupling(model, x, y, counts)["grad_many_to_few"] == 0.0
    with pytest.raises(ValueError, match="Few-class"):
        longtail.head_tail_coupling(model, x, torch.tensor([0, 1, 0, 2, 3, 2, 3, 1]), counts)
