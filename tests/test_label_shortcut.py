"""Pure-noise training images (Config.corrupt_kind = "noise") and the λ runs built on them."""
import pytest
import torch

from bgtutorial import experiments, shortcut
from bgtutorial.checkpoint import config_diff, config_dict
from bgtutorial.config import CORRUPT_KINDS, load_config
from bgtutorial.data.perturb import CORRUPTIONS, corrupt_plan
from bgtutorial.data.splits import build_splits


def test_corrupt_kind_noise_makes_every_corrupted_image_pure_noise_on_the_same_images():
    mixed = corrupt_plan(200, 1.0, seed=0)
    assert set(mixed.values()) == {"occlude", "noise"}
    plan = corrupt_plan(200, 1.0, seed=0, kind="noise")
    assert len(plan) == 200 and set(plan.values()) == {"noise"}
    half = corrupt_plan(200, 0.5, seed=0)
    for kind in ("noise", "occlude"):                                 # the same images are picked; only the kind
        assert set(corrupt_plan(200, 0.5, seed=0, kind=kind)) == set(half)
        assert set(corrupt_plan(200, 0.5, seed=0, kind=kind).values()) == {kind}
    assert corrupt_plan(200, 0.5, seed=0, kind="mixed") == half      # the default draws are unchanged
    with pytest.raises(ValueError, match="kind must be 'mixed' or one of occlude, noise"):
        corrupt_plan(10, 0.5, seed=0, kind="blur")
    assert set(CORRUPT_KINDS) == {"mixed", *CORRUPTIONS}
    with pytest.raises(ValueError, match="corrupt_kind must be one of mixed, occlude, noise"):
        load_config("smoke", corrupt=0.5, corrupt_kind="blur")


def test_a_stored_config_without_corrupt_kind_is_the_mixed_one():
    """Runs recorded before the field existed keep loading as the coin they were trained with."""
    saved = config_dict(load_config("smoke", corrupt=0.4))
    del saved["corrupt_kind"]
    assert config_diff(saved, load_config("smoke", corrupt=0.4)) == {}
    assert config_diff(saved, load_config("smoke", corrupt=0.4, corrupt_kind="noise")) == {
        "corrupt_kind": ("mixed", "noise")}


def test_a_pure_noise_training_split_is_all_noise_and_the_test_split_is_clean(tmp_path):
    cfg = load_config("smoke", data_root=str(tmp_path), corrupt=1.0, corrupt_kind="noise", progress=False)
    train, _, test = build_splits(cfg)
    assert len(train.plan) == len(train) and set(train.plan.values()) == {"noise"}
    clean_cfg = load_config("smoke", data_root=str(tmp_path), progress=False)
    clean_train, _, clean_test = build_splits(clean_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        noisy = train[3][0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clean = clean_train[3][0]
    assert not torch.allclose(noisy, clean) and train.targets == clean_train.targets
    assert torch.equal(test[0][0], clean_test[0][0])                   # the test split is untouched


def test_label_shortcut_runs_one_folder_per_lambda_under_pure_noise(tmp_path, monkeypatch):
    seen = []

    def fake(preset, out, **kw):
        seen.append((str(out), kw))
        return {"config": kw, "epochs": [{"R@1": 0.1}], "steps": []}

    monkeypatch.setattr(shortcut, "run_or_load", fake)
    out = shortcut.label_shortcut_runs("smoke", tmp_path, lams=(0.5, 1.0), seed=2, progress=False,
                                          module_kwargs={"k": 4}, loss="multi_similarity", plain_weight=0.01)
    assert sorted(out) == [0.5, 1.0]
    assert [o.rsplit("/", 1)[1] for o, _ in seen] == ["smoke-bgformer-purenoise-lam0.5-seed2",
                                                         "smoke-bgformer-purenoise-lam1-seed2"]
    for (_, kw), lam in zip(seen, (0.5, 1.0)):
        assert kw["corrupt"] == 1.0 and kw["corrupt_kind"] == "noise" and kw["batch_module"] == "bgformer" and kw["seed"] == 2
        assert kw["module_kwargs"] == {"k": 4, "lam": lam}
        assert kw["loss"] == "multi_similarity" and kw["plain_weight"] == 0.01


def test_label_shortcut_run_logs_both_halves_and_loads_when_finished(tmp_path, monkeypatch):
    kw = dict(data_root=str(tmp_path / "data"), epochs=1, loss="multi_similarity", plain_weight=0.01)
    out = shortcut.label_shortcut_runs("smoke", tmp_path / "runs", lams=(0.5,), progress=False, **kw)
    steps = out[0.5]["steps"]
    assert steps and all("loss_plain" in s and "loss_module" in s for s in steps)
    assert out[0.5]["config"]["corrupt"] == 1.0 and out[0.5]["config"]["corrupt_kind"] == "noise"
    assert out[0.5]["config"]["module_kwargs"]["lam"] == 0.5

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run is loaded, not trained again")

    monkeypatch.setattr(experiments, "train", no_training)
    again = shortcut.label_shortcut_runs("smoke", tmp_path / "runs", lams=(0.5,), progress=False, **kw)
    assert again[0.5]["epochs"] == out[0.5]["epochs"]
