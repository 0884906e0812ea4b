"""Shipped histories: compare(..., published=True) reads them instead of training, only for their own
config, and every history shipped in the package still matches its preset."""
import json
import warnings

import pytest

from bgtutorial import experiments
from bgtutorial.checkpoint import config_dict, config_diff
from bgtutorial.config import load_config


def _history(preset, folder, r1, **overrides):
    cfg = load_config(preset, out=str(folder), **overrides)
    epochs = [{"epoch": e + 1, "loss": 1.0 / (e + 1), "R@1": r1, "MAP@R": r1 / 4} for e in range(cfg.epochs)]
    return {"config": config_dict(cfg), "device": "cpu", "initial": {}, "epochs": epochs,
            "steps": [{"step": 1, "loss": 2.0}]}


@pytest.fixture
def shelf(tmp_path, monkeypatch):
    """An empty PUBLISHED folder, and a train() that must not be called."""
    monkeypatch.setattr(experiments, "PUBLISHED", tmp_path / "published")
    trained = []

    def fake_train(cfg, **kwargs):
        trained.append(cfg.run_dir.name)
        return _history(cfg.preset, cfg.run_dir, 0.1, seed=cfg.seed, batch_module=cfg.batch_module,
                        label_noise=cfg.label_noise, epochs=cfg.epochs)

    monkeypatch.setattr(experiments, "train", fake_train)
    return tmp_path, trained


def _publish(tmp_path, method, seed, r1, noise=0.0, **overrides):
    folder = experiments.run_folder(tmp_path / "elsewhere", "digits", method, seed, noise)
    h = _history("digits", folder, r1, seed=seed, batch_module=experiments.METHODS[method], label_noise=noise,
                 **overrides)
    name = experiments.published_stem(folder, h["config"])
    return experiments.publish_history(h, name, "test", dest=experiments.PUBLISHED)


def test_a_shipped_history_is_read_instead_of_training(shelf):
    tmp_path, trained = shelf
    path = _publish(tmp_path, "baseline", 1, 0.37)
    saved = json.loads(path.read_text())
    assert "steps" not in saved and saved["published"]["command"] == "test"       # per-step losses left out
    assert saved["published"]["optimiser_steps"] == 1                            # ... but counted
    runs = tmp_path / "runs"
    out = experiments.compare("digits", runs, methods=["baseline"], seeds=[0, 1], published=True, progress=False)
    assert trained == ["digits-baseline-noise0-seed0"]                          # seed 0: nothing shipped, trained
    assert out["baseline"][1]["epochs"][-1]["R@1"] == 0.37 and "published" in out["baseline"][1]
    assert experiments.optimiser_steps(out["baseline"][1]) == 1                   # from the record
    out["baseline"][0]["steps"] *= 3
    assert experiments.optimiser_steps(out["baseline"][0]) == 3                   # from the per-step log
    assert not (runs / "digits-baseline-noise0-seed1").exists()                 # nothing written into the runs
    # without published=True the shipped history is not looked at
    experiments.compare("digits", runs, methods=["baseline"], seeds=[1], progress=False)
    assert trained[-1] == "digits-baseline-noise0-seed1"


def test_a_finished_local_run_wins_over_the_shipped_one(shelf):
    tmp_path, trained = shelf
    _publish(tmp_path, "bgformer", 0, 0.9)
    runs = tmp_path / "runs"
    folder = experiments.run_folder(runs, "digits", "bgformer", 0)
    folder.mkdir(parents=True)
    local = _history("digits", folder, 0.2, seed=0, batch_module="bgformer")
    (folder / "history.json").write_text(json.dumps(local))
    out = experiments.compare("digits", runs, methods=["bgformer"], seeds=[0], published=True, progress=False)
    assert out["bgformer"][0]["epochs"][-1]["R@1"] == 0.2 and not trained


def test_a_shipped_history_of_another_config_is_ignored_with_a_warning(shelf):
    tmp_path, trained = shelf
    _publish(tmp_path, "baseline", 0, 0.5, epochs=3)
    with pytest.warns(UserWarning, match="epochs"):
        out = experiments.compare("digits", tmp_path / "runs", methods=["baseline"], seeds=[0], published=True,
                                  progress=False, epochs=2)
    assert trained == ["digits-baseline-noise0-seed0"] and out["baseline"][0]["epochs"][-1]["R@1"] == 0.1


def test_label_noise_long_tail_and_unshared_head_get_their_own_names(shelf):
    tmp_path, trained = shelf
    _publish(tmp_path, "baseline", 0, 0.6, noise=0.4)
    _publish(tmp_path, "baseline", 0, 0.7, imbalance=10.0)
    _publish(tmp_path, "batchformer", 0, 0.8, shared_head=False)
    names = sorted(p.name for p in experiments.PUBLISHED.iterdir())
    assert names == ["digits-baseline-noise0-seed0-imbalance10.json", "digits-baseline-noise0.4-seed0.json",
                     "digits-batchformer-noise0-seed0-unshared-head.json"]
    runs = tmp_path / "runs"
    noisy = experiments.compare("digits", runs, methods=["baseline"], seeds=[0], label_noise=0.4, published=True,
                                progress=False)
    tail = experiments.compare("digits", runs / "imbalance10", methods=["baseline"], seeds=[0], imbalance=10.0,
                               published=True, progress=False)
    assert noisy["baseline"][0]["epochs"][-1]["R@1"] == 0.6 and tail["baseline"][0]["epochs"][-1]["R@1"] == 0.7
    unshared = experiments.compare("digits", runs / "unshared-head", methods=["batchformer"], seeds=[0],
                                   shared_head=False, published=True, progress=False)
    assert unshared["batchformer"][0]["epochs"][-1]["R@1"] == 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                          # the balanced clean run: no file
        experiments.compare("digits", runs, methods=["baseline"], seeds=[0], published=True, progress=False)
        experiments.compare("digits", runs, methods=["batchformer"], seeds=[0], published=True, progress=False)
    assert trained == ["digits-baseline-noise0-seed0", "digits-batchformer-noise0-seed0"]   # shared head: no file


SHIPPED = sorted(experiments.PUBLISHED.glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_history_matches_its_preset_today(path):
    """A preset changed after its runs were measured makes this fail: measure and publish again."""
    h = json.loads(path.read_text())
    c = h["config"]
    folder = experiments.run_folder("runs", c["preset"], "baseline" if c["batch_module"] == "none" else c["batch_module"],
                                    c["seed"], c["label_noise"], c.get("corrupt", 0.0))
    assert path.stem == experiments.published_stem(folder, c)
    # a study variant (long tail at the balanced runs' steps, unshared head, alpha, lambda, K) is an
    # explicit override that the file name spells out; nothing else may differ from the preset
    variant = {k: c[k] for k, (plain, _, _) in experiments.VARIANTS.items() if c.get(k, plain) != plain}
    module = c.get("module_kwargs") or {}
    assert set(module) <= set(experiments.MODULE_VARIANTS), f"{path.name}: module options its name does not say"
    if module:
        variant["module_kwargs"] = module
    steps = {"steps_per_epoch": c["steps_per_epoch"]} if c.get("imbalance", 1.0) != 1.0 else {}
    cfg = load_config(c["preset"], out=str(folder), seed=c["seed"], batch_module=c["batch_module"],
                      label_noise=c["label_noise"], corrupt=c.get("corrupt", 0.0), **variant)
    assert config_diff(c, cfg) == {}
    assert len(h["epochs"]) == cfg.epochs and h["epochs"][-1]["epoch"] == cfg.epochs
    assert 0.0 <= h["epochs"][-1]["R@1"] <= 1.0 and "steps" not in h and h["published"]["command"]
    n = experiments.optimiser_steps(h)
    assert n > 0 and n % cfg.epochs == 0
    if steps:                                        # the long-tailed runs really got the balanced schedule
        assert n == cfg.epochs * cfg.steps_per_epoch


def test_the_package_ships_the_from_scratch_glyphs_study():
    """docs/results.md's from-scratch tables come from these: 3 methods x 3 seeds x label noise 0, 0.2 and 0.4
    (measured with the preset then called glyphs, now glyphs-scratch: the same config)."""
    names = {p.stem for p in SHIPPED}
    want = {f"glyphs-scratch-{m}-noise{p:g}-seed{s}" for m in experiments.METHODS for s in (0, 1, 2) for p in (0.0, 0.2, 0.4)}
    assert want <= names, sorted(want - names)


def test_the_package_ships_the_long_tailed_and_unshared_head_studies():
    """docs/results.md's long-tailed table and notebook 02's claims (a) and (b) read these."""
    names = {p.stem for p in SHIPPED}
    want = {f"glyphs-scratch-{m}-noise0-seed{s}-imbalance10-steps51" for m in experiments.METHODS for s in (0, 1, 2)}
    want |= {f"glyphs-scratch-batchformer-noise0-seed{s}-unshared-head" for s in (0, 1, 2)}
    assert want <= names, sorted(want - names)
    for s in (0, 1, 2):                              # the unshared runs carry the module head's metrics
        h = json.loads((experiments.PUBLISHED / f"glyphs-scratch-batchformer-noise0-seed{s}-unshared-head.json").read_text())
        assert 0.0 <= h["epochs"][-1]["module_head_R@1"] <= 1.0


def test_the_package_ships_the_pretrained_glyphs_comparison():
    """docs/results.md's main comparison on the default: 3 methods x 5 seeds, the glyph-pretrained backbone
    fine-tuned, read through experiments.paired_summary."""
    names = {p.stem for p in SHIPPED}
    want = {f"glyphs-{m}-noise0-seed{s}" for m in experiments.METHODS for s in range(5)}
    assert want <= names, sorted(want - names)
    r1 = {m: [json.loads((experiments.PUBLISHED / f"glyphs-{m}-noise0-seed{s}.json").read_text())["epochs"][-1]["R@1"]
              for s in range(5)] for m in experiments.METHODS}
    for m in ("batchformer", "bgformer"):
        s = experiments.paired_summary(r1[m], r1["baseline"])
        assert s["n"] == 5 and s["low"] <= s["mean"] <= s["high"]
    assert min(r1["baseline"]) > 0.443          # fine-tuned, every seed beats the from-scratch network's 0.443
