"""The glyph backbone's pretraining: the shipped weights match their JSON, load offline behind a sha256
check, and the command that made them runs (tiny) and resumes."""
import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from bgtutorial import pretrain as pt
from bgtutorial.models import GLYPH_WEIGHTS, SmallCNN, build_backbone, load_glyph_weights
from bgtutorial.config import load_config


def test_the_shipped_weights_match_their_json():
    meta = json.loads(GLYPH_WEIGHTS.with_suffix(".json").read_text())
    for key in ("sha256", "characters", "command", "seconds", "machine", "heldout_top1"):
        assert key in meta, key
    assert hashlib.sha256(GLYPH_WEIGHTS.read_bytes()).hexdigest() == meta["sha256"]
    assert meta["command"].startswith("python -m bgtutorial.pretrain") and meta["seconds"] > 0
    assert 1 / len(meta["characters"]) < meta["heldout_top1"] <= 1.0
    assert GLYPH_WEIGHTS.stat().st_size < 4 * 2 ** 20                         # a few MB at most
    SmallCNN().load_state_dict(torch.load(GLYPH_WEIGHTS, weights_only=True))  # every key, every shape


def test_pretrained_smallcnn_is_the_shipped_backbone():
    net, dim = build_backbone("smallcnn", pretrained=True)
    state = torch.load(GLYPH_WEIGHTS, weights_only=True)
    assert dim == 256 and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    fresh, _ = build_backbone("smallcnn", pretrained=False)
    assert not torch.equal(fresh.state_dict()["body.1.weight"], state["body.1.weight"])


def test_a_damaged_or_missing_weights_file_is_refused(tmp_path):
    bad = tmp_path / GLYPH_WEIGHTS.name
    shutil.copy(GLYPH_WEIGHTS, bad)
    shutil.copy(GLYPH_WEIGHTS.with_suffix(".json"), bad.with_suffix(".json"))
    load_glyph_weights(SmallCNN(), bad)                                       # the copy loads
    raw = bytearray(bad.read_bytes())
    raw[-10] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        load_glyph_weights(SmallCNN(), bad)
    with pytest.raises(FileNotFoundError, match="bgtutorial.pretrain"):
        load_glyph_weights(SmallCNN(), tmp_path / "none.pt")


def test_the_presets_fine_tune_the_pretrained_backbone_and_scratch_does_not():
    for name in ("glyphs", "glyphs-quick", "glyphs-bgformer"):
        cfg = load_config(name)
        assert cfg.backbone == "smallcnn" and cfg.pretrained and cfg.warm_epochs >= 1, name
    scratch = load_config("glyphs-scratch")
    assert not scratch.pretrained and scratch.warm_epochs == 0 and scratch.epochs == 40


def test_shift_crop_is_random_crop_with_edge_padding():
    x = torch.randint(0, 256, (6, 3, 10, 12), dtype=torch.uint8)
    out = pt.shift_crop(x, 2, torch.Generator().manual_seed(3))
    dy, dx = torch.randint(0, 5, (2, 6), generator=torch.Generator().manual_seed(3))
    padded = F.pad(x.float(), (2, 2, 2, 2), mode="replicate")
    for i in range(6):                                                        # one crop at a time
        assert torch.equal(out[i].float(), padded[i, :, dy[i]:dy[i] + 10, dx[i]:dx[i] + 12])


def test_pretrain_runs_writes_a_matching_json_and_resumes(tmp_path, monkeypatch, request):
    monkeypatch.setattr(pt, "pretraining_characters", lambda: ("→", "♣", "∞", "♠"))
    kw = dict(epochs=2, per_class=6, heldout=2, batch_size=8, data_root=str(tmp_path / "data"), progress=False)
    meta = pt.pretrain(tmp_path / "out", tmp_path / "work", **kw)
    weights = tmp_path / "out" / GLYPH_WEIGHTS.name
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == meta["sha256"]
    assert meta["characters"] == ["→", "♣", "∞", "♠"] and len(meta["history"]) == 2
    assert json.loads(weights.with_suffix(".json").read_text())["sha256"] == meta["sha256"]
    load_glyph_weights(SmallCNN(), weights)
    first = torch.load(weights, weights_only=True)
    # a finished checkpoint of the same arguments is resumed, not retrained: the same weights again
    pt.pretrain(tmp_path / "again", tmp_path / "work", **kw)
    again = torch.load(tmp_path / "again" / GLYPH_WEIGHTS.name, weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)
    # a run interrupted after its first epoch resumes from the checkpoint and ends where the straight run did
    shutil.rmtree(tmp_path / "work")
    go_on = request.getfixturevalue("interrupt_pretraining")
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(tmp_path / "half", tmp_path / "work", **kw)
    assert torch.load(tmp_path / "work" / "last.pt", weights_only=True)["epoch"] == 1
    go_on()
    pt.pretrain(tmp_path / "half", tmp_path / "work", **kw)
    resumed = torch.load(tmp_path / "half" / GLYPH_WEIGHTS.name, weights_only=True)
    assert all(torch.equal(first[k], resumed[k]) for k in first)
    with pytest.raises(ValueError, match="heldout"):
        pt.pretrain(tmp_path / "x", tmp_path / "w2", **{**kw, "heldout": 6})
