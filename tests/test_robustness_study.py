"""robustness_study over label noise or corrupted images: folder names, configs, old runs still load."""
import json

import pytest

from bgtutorial import experiments
from bgtutorial.checkpoint import config_dict
from bgtutorial.config import load_config


@pytest.fixture
def calls(monkeypatch):
    """Record run_or_load's calls instead of training; each returns a fake one-epoch history."""
    seen = []

    def fake(preset, out, **overrides):
        seen.append((str(out), overrides))
        return {"config": overrides, "epochs": [{"R@1": 0.5}]}

    monkeypatch.setattr(experiments, "run_or_load", fake)
    return seen


def test_label_noise_study_keeps_its_folder_names(calls, tmp_path):
    study = experiments.robustness_study("digits", tmp_path, [0.0, 0.2], seeds=[0], methods=["baseline"])
    assert sorted(study) == [0.0, 0.2]
    names = [out.rsplit("/", 1)[1] for out, _ in calls]
    assert names == ["digits-baseline-noise0-seed0", "digits-baseline-noise0.2-seed0"]
    assert [kw["label_noise"] for _, kw in calls] == [0.0, 0.2] and all(kw["corrupt"] == 0.0 for _, kw in calls)


def test_corrupt_study_names_the_field_and_shares_the_clean_runs(calls, tmp_path):
    study = experiments.robustness_study("digits", tmp_path, [0.0, 0.4], seeds=[0, 1], methods=["baseline", "bgformer"],
                                         field="corrupt", epochs=1)
    assert set(study) == {0.0, 0.4} and set(study[0.4]) == {"baseline", "bgformer"} and len(study[0.4]["bgformer"]) == 2
    names = [out.rsplit("/", 1)[1] for out, _ in calls]
    assert "digits-bgformer-noise0-seed1" in names                     # level 0: the clean folder of every study
    assert "digits-bgformer-noise0-corrupt0.4-seed1" in names
    for out, kw in calls:
        assert kw["corrupt"] == (0.4 if "corrupt" in out.rsplit("/", 1)[1] else 0.0)
        assert kw["label_noise"] == 0.0 and kw["epochs"] == 1
    with pytest.raises(ValueError, match="field must be one of label_noise, corrupt"):
        experiments.robustness_study("digits", tmp_path, [0.1], field="lr")


def test_a_clean_run_from_before_the_field_is_loaded_not_retrained(tmp_path, monkeypatch):
    folder = experiments.run_folder(tmp_path, "digits", "baseline", 0)
    cfg = load_config("digits", out=str(folder), seed=0, batch_module="none", epochs=1)
    saved = config_dict(cfg)
    del saved["corrupt"]                                               # written before Config.corrupt existed
    folder.mkdir(parents=True)
    history = {"config": saved, "initial": {}, "epochs": [{"epoch": 1, "R@1": 0.25}], "steps": []}
    (folder / "history.json").write_text(json.dumps(history))

    def no_training(*args, **kwargs):
        raise AssertionError("the finished run must be loaded")

    monkeypatch.setattr(experiments, "train", no_training)
    out = experiments.robustness_study("digits", tmp_path, [0.0], seeds=[0], methods=["baseline"], field="corrupt",
                                       epochs=1, progress=False)
    assert out[0.0]["baseline"][0]["epochs"][-1]["R@1"] == 0.25
