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
from bgtutorial.cli import main
from bgtutorial.config import Config, load_config
from bgtutorial.train import train

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
    import bgtutorial.evaluate as evaluate_module

    real_embed, calls = evaluate_module.embed_dataset, []

    def nan_after_training(*args, **kwargs):
        emb, y = real_embed(*args, **kwargs)
        calls.append(1)
        return (emb if len(calls) == 1 else torch.full_like(emb, float("nan"))), y

    monkeypatch.setattr(evaluate_module, "embed_dataset", nan_after_training)
    assert main(cli(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test embeddings are NaN or inf" in err and "lower lr" in err
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    assert load_history(tmp_path / "history.json")["epochs"] == []


# ---------------------------------------------------------------- issue 23: one run per folder
HOLD = ("import sys, time\nfrom bgtutorial.checkpoint import hold_run_dir\n"
        "with hold_run_dir(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


def test_a_second_run_into_a_folder_in_use_stops_naming_the_holder(finished, tmp_path, capsys):
    """Issue 23, item 3: a second --force run into a folder while the first trained mixed their files."""
    import subprocess
    import sys

    out = copy_run(finished, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(cli(out, "--force")) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: the run folder {out} is in use by process {holder.pid} (" in err
        assert "wait for that run to finish" in err and "--out" in err
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before   # nothing touched
    finally:
        holder.kill()
        holder.wait()
    assert main(cli(out, "--force")) == 0                   # the lock died with its process
    assert not (out / ".lock").exists()


def test_a_run_holds_its_folder_while_it_trains(tmp_path):
    from bgtutorial.utils import LockedError

    tried = []

    def second_run(history):
        with pytest.raises(LockedError, match=rf"the run folder {tmp_path / 'run'} is in use by process \d+"):
            train(tiny(tmp_path / "run"), force=True)
        tried.append(True)

    train(tiny(tmp_path / "run"), callback=second_run)
    assert tried and not (tmp_path / "run" / ".lock").exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "history.json", "last.pt"]


def test_a_run_that_fails_before_training_leaves_no_folder(tmp_path, capsys):
    assert main(cli(tmp_path / "run", "--val_classes", "1000")) == 2
    assert "val_classes=1000" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- issue 23: checkpoints that load but do not fit
def _rewrite_last(out, change) -> None:
    ck = torch.load(out / "last.pt", weights_only=True)
    change(ck)
    torch.save(ck, out / "last.pt")


@pytest.mark.parametrize("change,expect", [
    (lambda ck: ck.pop("optimizer"), "does not fit this run (no entry 'optimizer')"),
    (lambda ck: ck["model"].__setitem__("head.weight", torch.zeros(3, 3)), "size mismatch for head.weight"),
    (lambda ck: ck["model"].pop("head.bias"), "Missing key(s) in state_dict: \"head.bias\""),
    (lambda ck: ck.__setitem__("epoch", "one"), "does not fit this run"),
    (lambda ck: ck.__setitem__("batch", 99), "epoch 1, batch 99 is not a point of this run's schedule"),
    (lambda ck: ck.__setitem__("history", "{not json"), "does not fit this run"),
    (lambda ck: next(iter(ck["optimizer"]["state"].values())).__setitem__("exp_avg", torch.zeros(2)),
     "optimizer state 'exp_avg' has shape (2,)"),
], ids=["no optimizer", "wrong shape", "missing key", "epoch not a number", "batch out of range", "history not JSON",
        "optimizer state shape"])
def test_checkpoint_that_loads_but_does_not_fit_says_what_to_do(finished, tmp_path, capsys, change, expect):
    out = copy_run(finished, tmp_path / "run")
    _rewrite_last(out, change)
    assert main(cli(out, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint {out / 'last.pt'}" in err and expect in err
    assert "--force" in err


def test_run_files_that_are_folders(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    (out / "last.pt").unlink()
    (out / "last.pt").mkdir()
    for extra in (["--resume"], ["--force"]):
        assert main(cli(out, *extra)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{out / 'last.pt'} is a folder" in err and "move it away" in err
    assert (out / "last.pt").is_dir()
    with pytest.raises(CheckpointError, match="is a folder"):
        atomic_save({"a": torch.ones(1)}, out / "last.pt")


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A full disk while saving: torch's own error became a traceback; the previous file must stay."""
    path = tmp_path / "last.pt"
    atomic_save({"a": torch.ones(2)}, path)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed\nmore lines")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write .*last.pt \(the write failed: \[enforce fail .*MiB free there\); the "
                                              r"previous last.pt is intact\. Free some space .*--resume"):
        atomic_save({"a": torch.zeros(2)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_disk_that_fills_up_during_training_gives_one_line(tmp_path):
    """A real write failure: the process may write files of at most 200 kB (RLIMIT_FSIZE), last.pt is larger."""
    import subprocess
    import sys

    code = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
            "from bgtutorial.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    run = subprocess.run([sys.executable, "-c", code, *cli(tmp_path / "run")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: could not write {tmp_path / 'run' / 'last.pt'} (")
    assert "MiB free there" in lines[0]
    assert "no last.pt was written" in lines[0] and "--resume" in lines[0]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "history.json"]   # no temporary


# ---------------------------------------------------------------- issue 23: histories of the wrong shape
@pytest.mark.parametrize("history,expect", [
    ({"config": {}, "epochs": 5}, "'epochs' is a int, not a list"),
    ({"config": [], "epochs": []}, "'config' is a list, not an object"),
    ({"config": {}, "epochs": [{"epoch": 1, "R@1": "high"}]}, "holds non-numbers under 'R@1'"),
    ({"config": {}, "epochs": [[1, 2]]}, "epoch record 1 is not an object"),
    ({"config": {}, "epochs": [], "steps": {}}, "'steps' is not a list"),
])
def test_history_of_the_wrong_shape_read_by_experiments(tmp_path, capsys, history, expect):
    folder = tmp_path / "runs" / "digits-baseline-noise0-seed0"
    folder.mkdir(parents=True)
    (folder / "history.json").write_text(json.dumps(history))
    assert experiments.main(["--preset", "digits", "--runs", str(tmp_path / "runs"), "--seeds", "0",
                             "--methods", "baseline", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a bgtutorial history" in err and expect in err and "--resume" in err


def test_the_advice_for_a_broken_history_is_true(finished, tmp_path):
    """'delete it and train again with --resume': the history comes back from last.pt, no epoch lost."""
    out = copy_run(finished, tmp_path / "run")
    good = load_history(out / "history.json")
    (out / "history.json").write_text('{"config": ')
    with pytest.raises(CheckpointError, match=r"delete it and train again with --resume .*last.pt holds the history"):
        load_history(out / "history.json")
    (out / "history.json").unlink()
    assert main(cli(out, "--resume")) == 0
    assert load_history(out / "history.json")["epochs"] == good["epochs"]


def test_a_file_system_without_locks_trains_with_a_warning(tmp_path, monkeypatch):
    """Some network and FUSE mounts (a Drive folder on Colab) refuse flock: train anyway, and say so."""
    import errno
    import fcntl

    real = fcntl.flock

    def no_locks(handle, op):
        if op & fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, "No locks available")
        return real(handle, op)

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match=r"cannot lock .*\.lock on this file system \(No locks available\)"):
        train(tiny(tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "history.json", "last.pt"]
