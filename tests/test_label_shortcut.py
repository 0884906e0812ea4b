"""Pure-noise training images (shortcut.noise_only_images) and the λ runs built on them."""
import pytest
import torch

from bgtutorial import experiments, shortcut
from bgtutorial.config import load_config
from bgtutorial.data.perturb import corrupt_plan
from bgtutorial.data.splits import build_splits


def test_noise_only_images_makes_every_corrupted_image_pure_noise_and_restores_the_kinds():
    assert set(corrupt_plan(200, 1.0, seed=0).values()) == {"occlude", "noise"}
    half = corrupt_plan(200, 0.5, seed=0)
    with shortcut.noise_only_images():
        plan = corrupt_plan(200, 1.0, seed=0)
        assert len(plan) == 200 and set(plan.values()) == {"noise"}
        assert set(corrupt_plan(200, 0.5, seed=0)) == set(half)      # the same images are picked; only the kind changes
    assert set(corrupt_plan(200, 1.0, seed=0).values()) == {"occlude", "noise"}
    with pytest.raises(KeyError):
        with shortcut.noise_only_images():
            raise KeyError("an error inside")
    assert set(corrupt_plan(200, 1.0, seed=0).values()) == {"occlude", "noise"}   # restored after an error too


def test_a_training_split_built_inside_is_all_noise_and_the_test_split_is_clean(tmp_path):
    cfg = load_config("smoke", data_root=str(tmp_path), corrupt=1.0, progress=False)
    with shortcut.noise_only_images():
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
        seen.append((str(out), kw, set(corrupt_plan(50, 1.0, 0).values())))
        return {"config": kw, "epochs": [{"R@1": 0.1}], "steps": []}

    monkeypatch.setattr(shortcut, "run_or_load", fake)
    out = shortcut.label_shortcut_runs("smoke", tmp_path, lams=(0.5, 1.0), seed=2, progress=False,
                                          module_kwargs={"k": 4}, loss="multi_similarity", plain_weight=0.01)
    assert sorted(out) == [0.5, 1.0]
    assert [o.rsplit("/", 1)[1] for o, _, _ in seen] == ["smoke-bgformer-purenoise-lam0.5-seed2",
                                                         "smoke-bgformer-purenoise-lam1-seed2"]
    for (_, kw, kinds), lam in zip(seen, (0.5, 1.0)):
        assert kinds == {"noise"}                                      # the plans drawn during the run: noise only
        assert kw["corrupt"] == 1.0 and kw["batch_module"] == "bgformer" and kw["seed"] == 2
        assert kw["module_kwargs"] == {"k": 4, "lam": lam}
        assert kw["loss"] == "multi_similarity" and kw["plain_weight"] == 0.01
    assert set(corrupt_plan(50, 1.0, 0).values()) == {"occlude", "noise"}


def test_label_shortcut_run_logs_both_halves_and_loads_when_finished(tmp_path, monkeypatch):
    kw = dict(data_root=str(tmp_path / "data"), epochs=1, loss="multi_similarity", plain_weight=0.01)
    out = shortcut.label_shortcut_runs("smoke", tmp_path / "runs", lams=(0.5,), progress=False, **kw)
    steps = out[0.5]["steps"]
    assert steps and all("loss_plain" in s and "loss_module" in s for s in steps)
    assert out[0.5]["config"]["corrupt"] == 1.0 and out[0.5]["config"]["module_kwargs"]["lam"] == 0.5

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run is loaded, not trained again")

    monkeypatch.setattr(experiments, "train", no_training)
    again = shortcut.label_shortcut_runs("smoke", tmp_path / "runs", lams=(0.5,), progress=False, **kw)
    assert again[0.5]["epochs"] == out[0.5]["epochs"]
