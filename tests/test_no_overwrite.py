"""Issue 32, item 3: nothing a user owns is overwritten by a command that fails: pretrain checks every
argument first and writes its two files together, the run lock follows no link, a refused run writes
nothing, nbtools checks it can write before it runs."""
import hashlib
import os
import pickle

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from bgtutorial import nbtools
from bgtutorial import pretrain as pt
from bgtutorial.checkpoint import CheckpointError
from bgtutorial.cli import main as train_main
from bgtutorial.models import GLYPH_WEIGHTS, SmallCNN, load_glyph_weights
from bgtutorial.utils import UserError, exclusive_lock

CHARS = ("→", "♣", "∞", "♠")
TINY = ["--epochs", "2", "--per_class", "6", "--heldout", "2", "--batch_size", "8"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def _tree(root) -> dict:
    """Every file under ``root`` with its bytes' sha256: what a failed command must leave as it was."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """pretrain on four characters, run from ``tmp_path``; the package's weights folder is a copy."""
    monkeypatch.setattr(pt, "pretraining_characters", lambda: CHARS)
    monkeypatch.chdir(tmp_path)
    package = tmp_path / "package" / "weights"
    package.mkdir(parents=True)
    for suffix in (".pt", ".json"):
        (package / GLYPH_WEIGHTS.with_suffix(suffix).name).write_bytes(GLYPH_WEIGHTS.with_suffix(suffix).read_bytes())
    monkeypatch.setattr(pt, "GLYPH_WEIGHTS", package / GLYPH_WEIGHTS.name)
    return tmp_path


def test_pretrain_writes_to_runs_by_default_and_into_the_package_only_with_publish(tiny, capsys):
    shipped = _tree(tiny / "package")
    assert "default: runs/pretrain/" in " ".join(pt._parser().format_help().split())
    assert pt.main([*TINY, "--data_root", "data"]) == 0
    assert _tree(tiny / "package") == shipped                                   # the shipped weights untouched
    load_glyph_weights(SmallCNN(), tiny / "runs" / "pretrain" / GLYPH_WEIGHTS.name)
    assert pt.main([*TINY, "--out", str(tiny / "package" / "weights")]) == 2
    assert "pass --publish" in _one_line(capsys)
    assert pt.main([*TINY, "--publish", "--out", "x"]) == 2
    assert "drop --out" in _one_line(capsys)
    assert pt.main([*TINY, "--publish", "--data_root", "data"]) == 0
    assert _tree(tiny / "package") != shipped
    load_glyph_weights(SmallCNN(), tiny / "package" / "weights" / GLYPH_WEIGHTS.name)


BAD_PRETRAIN = [  # (argv, what the one line names), each refused before the corpus is rendered
    (["--epochs", "0"], "--epochs 0 must be an integer >= 1"),
    (["--epochs", "-1"], "--epochs -1"),
    (["--seed", str(2 ** 70)], "--seed 1180591620717411303424 is out of range"),
    (["--seed", "-1"], "--seed -1 is out of range"),
    (["--lr", "1e30"], "--lr 1e+30 must be in (0, 1]"),
    (["--lr", "nan"], "--lr nan must be in (0, 1]"),
    (["--lr", "0"], "--lr 0.0 must be in (0, 1]"),
    (["--heldout", "0"], "heldout must be in (0, per_class=40)"),
    (["--per_class", "1"], "--per_class 1 must be an integer >= 2"),
    (["--batch_size", "0"], "--batch_size 0 must be"),
    (["--batch_size", "100000"], "--batch_size 100000 is larger than the training set"),
    (["--out", "afile"], "--out afile is a file"),
    (["--out", "afile/sub"], "--out afile/sub lies under afile, which is a file"),
    (["--out", "x" * 300], "has a name of 300 bytes"),
    (["--work", "afile"], "--work afile is a file"),
    (["--data_root", "afile"], "--data_root afile is a file"),
]


@pytest.mark.parametrize("argv,expect", BAD_PRETRAIN, ids=[" ".join(a)[:40] for a, _ in BAD_PRETRAIN])
def test_pretrain_checks_every_argument_before_it_trains(argv, expect, tiny, monkeypatch, capsys):
    (tiny / "afile").write_text("mine")
    before = _tree(tiny)

    def no_corpus(*args, **kwargs):
        raise AssertionError("the corpus was rendered before the arguments were checked")

    monkeypatch.setattr(pt, "build_corpus", no_corpus)
    assert pt.main(argv) == 2
    assert expect in _one_line(capsys)
    assert _tree(tiny) == before and not (tiny / "runs").exists()


def test_a_read_only_out_is_refused_before_training(tiny, monkeypatch, capsys):
    ro = tiny / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(ro) else real(p, mode, **kw))
    assert pt.main(["--out", str(ro / "w")]) == 2
    assert f"--out {ro / 'w'} cannot be written: {ro} is read-only" in _one_line(capsys)


def _ckpt(tiny):
    assert pt.main([*TINY, "--data_root", "data"]) == 0
    return tiny / "runs" / "pretrain" / "last.pt"


def test_impossible_damaged_or_foreign_checkpoints_are_refused_and_kept(tiny, capsys):
    ckpt = _ckpt(tiny)
    state = torch.load(ckpt, weights_only=True)
    cases = [({**state, "epoch": 99}, "claims epoch 99 of 2"),
             ({**state, "epoch": 1}, "claims epoch 1 of 2 with 2 epoch records"),
             ({**state, "args": {**state["args"], "lr": 0.1}}, "other settings (lr differ)"),
             ({**state, "net": {k: v[:1] if v.ndim else v for k, v in state["net"].items()}}, "does not fit"),
             ({**state, "net": {k: v * float("nan") if v.is_floating_point() else v for k, v in state["net"].items()}}, "NaN or inf")]
    for bad, expect in cases:
        torch.save(bad, ckpt)
        before = _tree(tiny)
        assert pt.main([*TINY, "--data_root", "data"]) == 2, expect
        err = _one_line(capsys)
        assert expect in err and "runs/pretrain/last.pt" in err
        assert _tree(tiny) == before                              # nothing overwritten, the checkpoint kept
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    assert pt.main([*TINY, "--data_root", "data"]) == 2
    assert "truncated or not a checkpoint" in _one_line(capsys)


def test_checkpoint_messages_name_the_checkpoint(tiny, capsys):
    ckpt = _ckpt(tiny)
    torch.save({**torch.load(ckpt, weights_only=True), "epoch": 99}, ckpt)
    with pytest.raises(CheckpointError, match=f"{ckpt} claims epoch 99 of 2"):
        pt.pretrain(tiny / "o", ckpt.parent, epochs=2, per_class=6, heldout=2, batch_size=8, data_root="data",
                    progress=False)


def test_non_finite_weights_are_never_written(tiny, monkeypatch, capsys):
    out = tiny / "out"
    with pytest.raises(FloatingPointError, match="holds NaN or inf"):
        pt._write_together(out, {"w": torch.tensor([1.0, float("inf")])}, {})
    assert not out.exists()
    nan = torch.tensor(float("nan"), requires_grad=True)
    monkeypatch.setattr(pt.F, "cross_entropy", lambda *a, **k: nan * 1.0)
    assert pt.main([*TINY, "--out", str(out), "--data_root", "data"]) == 2
    assert "the pretraining loss became nan in epoch 1, batch 1" in _one_line(capsys)
    assert not out.exists() and not (tiny / "runs").exists()


def test_weights_and_json_are_written_together(tiny, monkeypatch):
    out = tiny / "package" / "weights"
    before = _tree(out)
    real = os.replace

    def json_fails(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(pt.os, "replace", json_fails)
    with pytest.raises(UserError, match="No space left on device.*as they were"):
        pt._write_together(out, SmallCNN().state_dict(), {"characters": list(CHARS)})
    assert _tree(out) == before                                 # the old weights are back, beside their JSON
    load_glyph_weights(SmallCNN(), out / GLYPH_WEIGHTS.name)


def test_ctrl_c_prints_where_the_checkpoint_stands_and_how_to_resume(tiny, interrupt_pretraining, capsys):
    assert pt.main([*TINY, "--data_root", "data"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runs/pretrain/last.pt holds epoch 1 of 2" in err
    assert "resume it with the same command: python -m bgtutorial.pretrain --epochs 2" in err
    interrupt_pretraining()                                     # the next run goes through
    assert pt.main([*TINY, "--data_root", "data"]) == 0
    assert "resuming" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ run lock
@pytest.mark.parametrize("kind", ["symlink", "folder", "fifo"])
def test_the_lock_refuses_what_is_not_a_regular_file_and_follows_no_link(kind, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    mine = tmp_path / "mine.txt"
    mine.write_text("my notes\n")
    lock = run / ".lock"
    {"symlink": lambda: lock.symlink_to(mine), "folder": lock.mkdir, "fifo": lambda: os.mkfifo(lock)}[kind]()
    with pytest.raises(UserError, match=f"{lock} is (a symbolic link|a folder|not a regular file)"):
        with exclusive_lock(lock, wait=False):
            pass
    assert train_main(["--preset", "digits", "--out", str(run), "--data_root", str(tmp_path / "data")]) == 2
    assert str(lock) in _one_line(capsys)
    assert mine.read_text() == "my notes\n" and sorted(p.name for p in run.iterdir()) == [".lock"]


def test_a_refused_run_writes_nothing(tmp_path, capsys):
    """The batch sampler refuses this batch after the data and the model were built: config.json used to be
    written by then, and the corrected command was refused as another config."""
    argv = ["--preset", "digits", "--out", str(tmp_path / "run"), "--data_root", str(tmp_path / "data"), "--epochs", "1"]
    assert train_main([*argv, "--batch_size", "3999999999996"]) == 2
    assert "distinct classes" in _one_line(capsys)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- nbtools
def test_nbtools_checks_it_can_write_before_it_runs(tmp_path, monkeypatch, capsys):
    path = tmp_path / "nb.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("1 + 1")]), path)
    before = path.read_bytes()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(path) else real(p, mode, **kw))
    ran = []
    monkeypatch.setattr(nbtools, "execute_notebook", lambda *a, **k: ran.append(a) or [])
    for cmd in ("execute", "strip"):
        assert nbtools._main([cmd, str(path)]) == 2
        assert f"{path} is read-only" in _one_line(capsys)
    assert ran == [] and path.read_bytes() == before


def test_a_weights_file_that_is_a_pickle_is_refused(tmp_path):
    bad = tmp_path / GLYPH_WEIGHTS.name
    bad.write_bytes(pickle.dumps(os.path.join, protocol=2))   # code, which weights_only refuses
    bad.with_suffix(".json").write_text('{"sha256": "%s"}' % hashlib.sha256(bad.read_bytes()).hexdigest())
    with pytest.raises(ValueError, match=f"{bad} does not hold SmallCNN weights"):
        load_glyph_weights(SmallCNN(), bad)
