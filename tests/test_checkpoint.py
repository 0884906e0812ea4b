"""Run folders that know their config, safe checkpoints, and runs that stop when they blow up."""
import json
import math
import shutil

import pytest
import torch

from bgtutorial import experiments
from bgtutorial.checkpoint import (MUTABLE_FIELDS, CheckpointError, ConfigMismatchError, atomic_save, config_dict,
                                   config_diff, first_nonfinite, load_checkpoint, load_history, nonfinite_tensors,
                                   prepare_run_dir)
from bgtutorial.train import Config, load_config, main, train

TINY = dict(views=1, epochs=1, batch_size=20, m=4, steps_per_epoch=2, eval_nmi=False, progress=False, embed_dim=16)


def tiny(out, **overrides) -> Config:
    return load_config("digits", out=str(out), **{**TINY, **overrides})


def cli(out, *extra: str) -> list[str]:
    args = ["--preset", "digits", "--out", str(out)]
    for k, v in TINY.items():
        args += [f"--{k}", str(v)]
    return args + list(extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (copy it before changing it): its folder and config."""
    out = tmp_path_factory.mktemp("finished")
    cfg = tiny(out)
    train(cfg)
    return out, cfg


def copy_run(finished, dst):
    shutil.copytree(finished[0], dst)
    return dst


# ---------------------------------------------------------------- the pieces, against plain references
def test_nonfinite_tensors_names_every_bad_tensor():
    state = {"model": {"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")])},
             "opt": [{"m": torch.tensor([float("inf")])}, {"step": torch.tensor(3)}],
             "rng": torch.zeros(4, dtype=torch.uint8), "note": "text"}
    flat = {"model.a": state["model"]["a"], "model.b": state["model"]["b"], "opt.0.m": state["opt"][0]["m"]}
    ref = [name for name, t in flat.items() if not all(math.isfinite(v) for v in t.tolist())]   # plain loop
    assert nonfinite_tensors(state) == ref == ["model.b", "opt.0.m"]
    net = torch.nn.Linear(3, 2)
    assert first_nonfinite(net.named_parameters()) is None
    with torch.no_grad():
        net.bias[1] = -float("inf")
    assert first_nonfinite(net.named_parameters()) == "bias"


def test_atomic_save_refuses_non_finite_weights(tmp_path):
    path = tmp_path / "last.pt"
    with pytest.raises(FloatingPointError, match=r"refusing to save .*last.pt: 1 tensor\(s\) hold NaN or inf, e.g. "
                                                 r"model.w.*lower lr"):
        atomic_save({"model": {"w": torch.tensor([0.0, float("nan")])}}, path)
    assert list(tmp_path.iterdir()) == []
    atomic_save({"model": {"w": torch.zeros(2)}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(2))


def test_config_diff_ignores_mutable_fields_and_defaults_missing_ones():
    cfg = load_config("digits")
    saved = config_dict(cfg)
    assert config_diff(saved, cfg) == {}
    for name in MUTABLE_FIELDS:
        assert name in saved, f"{name} is listed as mutable but is no config field"
    changed = {**saved, "progress": False, "num_workers": 3, "device": "cpu", "out": "elsewhere", "lr": 0.5,
               "module_kwargs": {"k": 4}}
    assert config_diff(changed, cfg) == {"lr": (0.5, cfg.lr), "module_kwargs": ({"k": 4}, {})}
    older = {k: v for k, v in saved.items() if k != "bn_freeze"}      # written before the field existed
    assert config_diff(older, cfg) == {}
    assert config_diff(older, load_config("digits", bn_freeze=True)) == {"bn_freeze": (False, True)}
    assert config_diff({**saved, "removed_field": 1}, cfg) == {}


# ---------------------------------------------------------------- the run folder knows its config
def test_run_folder_stores_its_config(finished):
    out, cfg = finished
    assert json.loads((out / "config.json").read_text()) == config_dict(cfg)
    assert json.loads(load_checkpoint(out / "last.pt")["config"]) == config_dict(cfg)
    assert load_history(out / "history.json")["config"] == config_dict(cfg)


def test_resume_with_another_lr_is_refused_then_forced(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    stamp = (out / "last.pt").stat().st_mtime_ns
    with pytest.raises(ConfigMismatchError, match=r"run folder .*run belongs to a run of another config "
                                                  r"\(lr: 0.001 there, 0.1 asked\); train into a new folder .*--force") as err:
        train(tiny(out, lr=0.1), resume=True)
    assert err.value.fields == {"lr": (0.001, 0.1)}
    with pytest.raises(ConfigMismatchError, match="lr: 0.001 there, 0.1 asked"):
        train(tiny(out, lr=0.1))                   # training again from scratch would overwrite it too
    assert (out / "last.pt").stat().st_mtime_ns == stamp
    h = train(tiny(out, lr=0.1), resume=True, force=True)
    assert h["config"]["lr"] == 0.1 and json.loads((out / "config.json").read_text())["lr"] == 0.1
    assert load_checkpoint(out / "last.pt")["optimizer"]["param_groups"][0]["initial_lr"] == 0.1


def test_resume_accepts_changes_to_mutable_fields(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    cfg = tiny(out, num_workers=0, eval_batch_size=64, ckpt_every=1, device="cpu", progress=True)
    h = train(cfg, resume=True)                    # finished: nothing left to do, the history comes back
    assert h["epochs"] == load_history(finished[0] / "history.json")["epochs"]


def test_cli_resume_with_another_config_exits_2_and_force_retrains(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    assert main(cli(out, "--lr", "0.01", "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the run folder") and "lr: 0.001 there, 0.01 asked" in err
    assert main(cli(out, "--lr", "0.01", "--resume", "--force")) == 0
    assert json.loads((out / "config.json").read_text())["lr"] == 0.01


def test_checkpoint_from_another_config_is_refused(finished, tmp_path, capsys):
    other = tiny(tmp_path / "other", weight_decay=0.01)
    prepare_run_dir(other.run_dir, other)                               # the folder says weight_decay=0.01 ...
    shutil.copy(finished[0] / "last.pt", other.run_dir / "last.pt")     # ... its last.pt was copied from elsewhere
    with pytest.raises(ConfigMismatchError, match=r"checkpoint .*other/last.pt belongs to a run of another config "
                                                  r"\(weight_decay: 0.0001 there, 0.01 asked\)"):
        train(other, resume=True)
    with pytest.raises(ConfigMismatchError, match="checkpoint"):
        load_checkpoint(other.run_dir / "last.pt", config=other)
    assert main(cli(other.run_dir, "--weight_decay", "0.01", "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "last.pt belongs to a run of another config" in err and "--force" in err


@pytest.mark.parametrize("size", ["empty", "truncated"])
def test_broken_checkpoint_says_what_to_do(finished, tmp_path, capsys, size):
    out = copy_run(finished, tmp_path / "run")
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(b"" if size == "empty" else data[: len(data) // 2])
    expect = "is empty" if size == "empty" else "is truncated or not a checkpoint"
    with pytest.raises(CheckpointError, match=rf"checkpoint .*last.pt {expect}.*delete it and train again"):
        load_checkpoint(out / "last.pt")
    assert main(cli(out, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"last.pt {expect}" in err and "--force" in err


# ---------------------------------------------------------------- train or load
def test_run_or_load_returns_only_the_history_of_the_config_asked(finished, tmp_path, monkeypatch):
    out = copy_run(finished, tmp_path / "run")

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run of the same config must be loaded, not trained")

    monkeypatch.setattr(experiments, "train", no_training)
    same = experiments.run_or_load("digits", out, **{**TINY, "num_workers": 0, "progress": True})
    assert same == load_history(finished[0] / "history.json")
    for field, value in [("batch_module", "batchformer"), ("embed_dim", 32), ("seed", 1), ("label_noise", 0.2),
                         ("epochs", 2)]:
        with pytest.raises(ConfigMismatchError, match=rf"\({field}: .* there, .* asked\).*--force") as err:
            experiments.run_or_load("digits", out, **{**TINY, field: value})
        assert set(err.value.fields) == {field}


def test_run_or_load_force_retrains_with_the_new_config(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    h = experiments.run_or_load("digits", out, force=True, **{**TINY, "seed": 1})
    assert h["config"]["seed"] == 1 and len(h["epochs"]) == 1
    assert experiments.run_or_load("digits", out, **{**TINY, "seed": 1}) == load_history(out / "history.json")


def test_truncated_history_says_what_to_do(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    text = (out / "history.json").read_text()
    (out / "history.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"history.json is truncated or not JSON .*delete it .*--force"):
        experiments.run_or_load("digits", out, **TINY)
    with pytest.raises(CheckpointError, match="history.json is truncated"):
        load_history(out / "history.json")


def test_experiments_cli_exits_2_on_another_config_and_on_a_broken_history(tmp_path, capsys):
    runs = tmp_path / "runs"
    folder = runs / "digits-baseline-noise0-seed0"
    old = load_config("digits", out=str(folder), seed=0, batch_module="none", label_noise=0.0, epochs=3)
    folder.mkdir(parents=True)
    (folder / "history.json").write_text(json.dumps({"config": config_dict(old), "initial": None, "epochs": [],
                                                     "steps": []}))
    assert experiments.main(["--preset", "digits", "--runs", str(runs), "--seeds", "0", "--methods", "baseline", "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epochs: 3 there, 5 asked" in err and "--force" in err
    (folder / "history.json").write_text('{"config": {"lr": 0.1')
    assert experiments.main(["--preset", "digits", "--runs", str(runs), "--seeds", "0", "--methods", "baseline", "--epochs", "5"]) == 2
    assert "history.json is truncated or not JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- nothing non-finite survives
def test_weights_that_stop_being_finite_stop_training(tmp_path, monkeypatch):
    real_step = torch.optim.AdamW.step

    def step_that_breaks_a_weight(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_that_breaks_a_weight)
    with pytest.raises(FloatingPointError, match=r"the weights \(backbone\.\S+\) became NaN or inf at epoch 1, "
                                                 r"batch 0; .*nothing .* was saved. Lower lr"):
        train(tiny(tmp_path, ckpt_every=1))
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


def test_embeddings_that_stop_being_finite_stop_training(tmp_path, monkeypatch):
    from bgtutorial.models import RetrievalNet

    real_forward = RetrievalNet.forward

    def nan_in_training(self, x, y=None):
        out = real_forward(self, x, y)
        if self.training:
            return out[0] * float("nan"), out[1]
        return out

    monkeypatch.setattr(RetrievalNet, "forward", nan_in_training)
    with pytest.raises(FloatingPointError, match=r"the embeddings became NaN or inf at epoch 1, batch 0"):
        train(tiny(tmp_path, ckpt_every=1))
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


def test_diverged_model_gets_no_score_and_no_checkpoint(tmp_path, monkeypatch, capsys):
    """Before: NaN test embeddings scored Recall@1 = 1.0, best.pt was saved, and the CLI exited 0."""
    import bgtutorial.train as train_module

    real_embed, calls = train_module.embed_dataset, []

    def nan_after_training(*args, **kwargs):
        emb, y = real_embed(*args, **kwargs)
        calls.append(1)
        return (emb if len(calls) == 1 else torch.full_like(emb, float("nan"))), y

    monkeypatch.setattr(train_module, "embed_dataset", nan_after_training)
    assert main(cli(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test embeddings are NaN or inf" in err and "lower lr" in err
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    assert load_history(tmp_path / "history.json")["epochs"] == []
