"""Model, loss, config/CLI and the training engine (checkpoints, kill and resume)."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from bgtutorial.checkpoint import load_checkpoint
from bgtutorial.cli import main
from bgtutorial.config import Config, load_config
from bgtutorial.losses import MetricLoss
from bgtutorial.models import RetrievalNet, backbone_weights, build_backbone
from bgtutorial.train import train

TINY = dict(views=1, epochs=2, batch_size=20, m=4, steps_per_epoch=6, eval_nmi=False, progress=False, embed_dim=16)


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet50", 2048), ("smallcnn", 256)])
def test_backbones_pool_to_features(name, dim):
    net, d = build_backbone(name, pretrained=False)
    assert d == dim
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, dim)


def test_pretrained_weights_resolve_through_torchvision_api():
    w = backbone_weights("resnet50")
    assert isinstance(w, torchvision.models.ResNet50_Weights) and w.url.startswith("https://download.pytorch.org/")


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*resnet50"):
        RetrievalNet("vgg", pretrained=False)


def test_retrieval_net_contract():
    net = RetrievalNet("smallcnn", embed_dim=32, pretrained=False)
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2])
    net.eval()
    e = net(x)
    assert e.shape == (6, 32) and torch.allclose(e.norm(dim=1), torch.ones(6), atol=1e-5)
    net.train()
    e2, y2 = net(x, y)
    assert e2.shape == (6, 32) and torch.equal(y2, y)


def _doubled_batch_and_losses():
    """A doubled batch (8, 16) of two halves of 4, and one Proxy-Anchor loss over it in two forms:
    ``joint`` (one loss over 2B) and ``split`` (0.25·plain + 0.75·module), with the same proxies."""
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    y = torch.tensor([0, 0, 1, 1] * 2)
    joint = MetricLoss("proxy_anchor", 3, 16)
    split = MetricLoss("proxy_anchor", 3, 16, plain_weight=0.25)
    split.load_state_dict(joint.state_dict())
    return emb, y, joint, split


def test_plain_weight_splits_the_doubled_batch():
    emb, y, joint, split = _doubled_batch_and_losses()
    expect = 0.25 * joint(emb[:4], y[:4]) + 0.75 * joint(emb[4:], y[4:])
    torch.testing.assert_close(split(emb, y, batch_size=4), expect)
    assert not torch.allclose(joint(emb, y, batch_size=4), expect)
    assert MetricLoss("multi_similarity", 3, 16)(emb, y) >= 0


def test_loss_keeps_each_halfs_loss_for_the_log():
    """``last_parts`` = the loss of the plain and of the module half, scored apart, whether the
    training loss weights the halves (``plain_weight``) or runs once over the doubled batch."""
    emb, y, joint, split = _doubled_batch_and_losses()
    halves = (joint(emb[:4], y[:4]), joint(emb[4:], y[4:]))
    assert joint.last_parts is None                  # a plain batch: nothing to split
    for loss in (joint, split):
        total = loss(emb.requires_grad_(), y, batch_size=4)
        assert total.requires_grad and not any(p.requires_grad for p in loss.last_parts)
        torch.testing.assert_close(loss.last_parts, halves)
    # the joint loss over 2B is not the mean of the halves (Proxy-Anchor averages over proxies
    # present in the batch), so the log really scores them apart
    assert not torch.allclose(joint(emb, y, batch_size=4), (halves[0] + halves[1]) / 2)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown backbone"):
        load_config("digits", backbone="alexnet")
    with pytest.raises(ValueError, match="multiple of m"):
        load_config("digits", batch_size=50, m=12)
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("imagenet")
    with pytest.raises(ValueError, match="unknown config field 'lr_max'"):
        load_config("digits", lr_max=1.0)
    assert load_config("digits-batchformer").batch_module == "batchformer"


def test_too_few_classes_for_sampler(tmp_path):
    cfg = load_config("digits", batch_size=24, m=4, out=str(tmp_path), **{k: v for k, v in TINY.items()
                                                                          if k not in ("batch_size", "m")})
    with pytest.raises(ValueError, match="needs 6 distinct classes but the data has only 5"):
        train(cfg)


def test_cli_bad_config_exits_with_message(capsys):
    assert main(["--preset", "digits", "--batch_size", "50"]) == 2
    assert "multiple of m" in capsys.readouterr().err


def test_presets_load_and_name_their_sources():
    cub = load_config("cub-resnet50")
    assert (cub.backbone, cub.embed_dim, cub.loss, cub.batch_size % cub.m) == ("resnet50", 512, "proxy_anchor", 0)
    text = (Path(__file__).parents[1] / "bgtutorial/configs/cub-resnet50.toml").read_text()
    assert "Kim et al." in text
    assert load_config("smoke").dataset == "fake-cub"


def test_training_improves_and_writes_artifacts(tmp_path):
    cfg = load_config("digits", out=str(tmp_path), **{**TINY, "epochs": 3, "steps_per_epoch": 15})
    h = train(cfg)
    assert [e["epoch"] for e in h["epochs"]] == [1, 2, 3]
    assert (tmp_path / "last.pt").is_file()
    assert not (tmp_path / "best.pt").exists()      # nothing is selected on the test classes
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["epochs"][-1]["R@1"] == h["epochs"][-1]["R@1"]
    assert h["epochs"][-1]["loss"] < h["epochs"][0]["loss"]
    assert "loss_plain" not in h["steps"][0] and "loss_plain" not in h["epochs"][0]   # no module, no halves
    assert not any(k.startswith("module_head_") for k in h["epochs"][-1])             # one head only
    ck = load_checkpoint(tmp_path / "last.pt")     # weights_only=True load must work
    assert ck["epoch"] == 3 and ck["batch"] == 0
    assert not list(tmp_path.glob("*.tmp*"))       # atomic writes leave no temporary file


def _final_lrs_and_steps(run):
    ck = load_checkpoint(run / "last.pt")
    return [g["lr"] for g in ck["optimizer"]["param_groups"]], ck["scheduler"]["last_epoch"]


def test_cosine_schedule_reaches_zero_and_counts_every_step(tmp_path):
    cfg = load_config("digits", out=str(tmp_path), **{**TINY, "epochs": 2, "steps_per_epoch": 5, "lr": 1e-3})
    train(cfg)
    lrs, counted = _final_lrs_and_steps(tmp_path)
    assert counted == 10                              # one scheduler step per optimiser step
    assert lrs == pytest.approx([0.0, 0.0], abs=1e-12)   # cosine ends at 0 (backbone/head and proxies)


def test_step_schedule_applies_its_factor(tmp_path):
    cfg = load_config("digits", out=str(tmp_path), **{**TINY, "epochs": 3, "steps_per_epoch": 4, "lr": 1e-3,
                                                      "schedule": "step", "lr_step": 1, "lr_gamma": 0.5})
    train(cfg)
    lrs, counted = _final_lrs_and_steps(tmp_path)
    assert counted == 12
    # after 3 epochs with a step every epoch: lr · 0.5³ (proxies at 100×)
    assert lrs == pytest.approx([1e-3 * 0.125, 1e-1 * 0.125])


def test_missing_checkpoint_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        load_checkpoint(tmp_path / "nope.pt")


def _cmd(out):
    args = [sys.executable, "-m", "bgtutorial.train", "--preset", "digits", "--out", str(out),
            "--ckpt_every", "1"]
    for k, v in {**TINY, "epochs": 3, "steps_per_epoch": 8, "batch_module": "batchformer"}.items():
        args += [f"--{k}", str(v)]
    return args


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(_cmd(ref), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_cmd(cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, killed_at = cut / "last.pt", None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            try:
                ck = torch.load(last, weights_only=True)
            except Exception:
                ck = None
            if ck is not None and ck["epoch"] * 8 + ck["batch"] >= 11:   # mid-way through epoch 2
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = ck["epoch"] * 8 + ck["batch"]
                break
        time.sleep(0.02)
    assert killed_at is not None, "the run ended before it could be killed"
    ck = torch.load(last, weights_only=True)
    assert ck["epoch"] * 8 + ck["batch"] < 24, "the kill must happen before the end"
    done = subprocess.run(_cmd(cut) + ["--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr
    a, b = torch.load(ref / "last.pt", weights_only=True), torch.load(last, weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["loss"]:
        assert torch.equal(a["loss"][key], b["loss"][key]), key
    ha, hb = json.loads((ref / "history.json").read_text()), json.loads((cut / "history.json").read_text())
    assert [s["loss"] for s in ha["steps"]] == [s["loss"] for s in hb["steps"]]
    assert [e["R@1"] for e in ha["epochs"]] == [e["R@1"] for e in hb["epochs"]]
    # the resumed scheduler counted every step: it ends where the uninterrupted one does (cosine: 0)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 24
    assert [g["lr"] for g in b["optimizer"]["param_groups"]] == pytest.approx([0.0] * 3, abs=1e-12)


def test_cub_resnet50_preset_path_runs_on_synthetic_archive(tmp_path):
    """The full GPU preset's code path (CUB loader, ResNet-50, step schedule, module lr group) on CPU."""
    cfg = load_config("cub-resnet50-batchformer", dataset="fake-cub", data_root=str(tmp_path / "data"),
                      out=str(tmp_path / "run"), pretrained=False, image_size=64, epochs=2, warm_epochs=1,
                      steps_per_epoch=1, batch_size=8, m=4, fake_classes=6, fake_per_class=4, num_workers=0,
                      eval_nmi=False, progress=False)
    h = train(cfg)
    assert [e["epoch"] for e in h["epochs"]] == [1, 2] and len(h["steps"]) == 2
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    lrs = [g["lr"] for g in ck["optimizer"]["param_groups"]]
    # backbone/head, proxies (x100), BatchFormer (x0.1) (the preset's [batchformer] table), before the first halving
    assert lrs == pytest.approx([1e-4, 1e-2, 1e-5])
    assert [g["weight_decay"] for g in ck["optimizer"]["param_groups"]] == pytest.approx([1e-4] * 3)
    assert any(k.startswith("batch_module.") for k in ck["model"])
    for step in h["steps"]:                      # each half's loss is logged beside the training loss
        assert math.isfinite(step["loss_plain"]) and math.isfinite(step["loss_module"])
    assert h["epochs"][0]["loss_plain"] == pytest.approx(h["steps"][0]["loss_plain"])


def test_cub_vits_preset_path_runs_on_synthetic_archive(tmp_path):
    """The paper-tier preset (ViT-S/16, hyperbolic loss, BGFormer) end to end on CPU, random weights."""
    cfg = load_config("cub-vits-bgformer", dataset="fake-cub", data_root=str(tmp_path / "data"),
                      out=str(tmp_path / "run"), pretrained=False, epochs=1, steps_per_epoch=1, batch_size=6, m=3,
                      fake_classes=6, fake_per_class=3, eval_nmi=False, progress=False, num_workers=0,
                      module_kwargs={"num_heads": 8, "k": 3})
    h = train(cfg)
    assert cfg.loss == "hyperbolic" and cfg.backbone == "vit_s16"
    assert len(h["steps"]) == 1 and math.isfinite(h["steps"][0]["loss"])
    step = h["steps"][0]                         # the preset's 0.01 / 0.99 weighting of the halves
    assert step["loss"] == pytest.approx(0.01 * step["loss_plain"] + 0.99 * step["loss_module"], rel=1e-5)
    assert 0 <= h["epochs"][0]["R@1"] <= 1


def test_ctrl_c_says_where_the_run_stands_and_how_to_resume(tmp_path):
    """Issue 23, item 8: Ctrl-C printed a KeyboardInterrupt traceback."""
    import shlex

    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out) + ["--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "last.pt").is_file():
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"interrupted: {out / 'last.pt'} holds the run ")
    assert " of 3 epochs" in lines[0] or " of 3, after " in lines[0]
    command = shlex.split(lines[0].split("continue it with: ", 1)[1])
    assert command[:3] == ["python", "-m", "bgtutorial.train"] and command[-1] == "--resume" and "--force" not in command
    done = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "resumed from" in done.stderr, done.stderr
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 3
    assert not (out / ".lock").exists()
