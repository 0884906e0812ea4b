"""experiments.published_study reads a study's shipped histories and never trains; paired_verdict reads a
paired comparison out with the project's one rule."""
import pytest

from bgtutorial import experiments
from bgtutorial.checkpoint import ConfigMismatchError, config_dict
from bgtutorial.config import load_config


def _publish(method, seed, r1, **overrides):
    folder = experiments.run_folder("elsewhere", "digits", method, seed)
    cfg = load_config("digits", out=str(folder), seed=seed, batch_module=experiments.METHODS[method], **overrides)
    h = {"config": config_dict(cfg), "device": "cpu", "initial": {},
         "epochs": [{"epoch": e + 1, "R@1": r1, "MAP@R": r1 / 4} for e in range(cfg.epochs)], "steps": [{"loss": 1.0}]}
    return experiments.publish_history(h, experiments.published_stem(folder, cfg), "test",
                                       dest=experiments.PUBLISHED)


@pytest.fixture
def shelf(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "PUBLISHED", tmp_path / "published")

    def no_training(*args, **kwargs):
        raise AssertionError("published_study must never train")

    monkeypatch.setattr(experiments, "train", no_training)
    return tmp_path


def test_published_study_reads_every_method_and_seed_in_order(shelf):
    for s, (b, t) in enumerate([(0.30, 0.32), (0.40, 0.41), (0.50, 0.53)]):
        _publish("baseline", s, b)
        _publish("batchformer", s, t)
        _publish("batchformer", s, t - 0.1, imbalance=10.0)
    out = experiments.published_study("digits", ("baseline", "batchformer"), seeds=[0, 1, 2])
    assert [h["config"]["seed"] for h in out["baseline"]] == [0, 1, 2]
    assert [h["epochs"][-1]["R@1"] for h in out["batchformer"]] == [0.32, 0.41, 0.53]
    tail = experiments.published_study("digits", ("batchformer",), seeds=[1], imbalance=10.0)
    assert tail["batchformer"][0]["epochs"][-1]["R@1"] == pytest.approx(0.31)


def test_published_study_refuses_a_missing_or_other_config_history(shelf):
    _publish("baseline", 0, 0.3, epochs=3)
    with pytest.raises(FileNotFoundError, match="digits-baseline-noise0-seed1.json.*--publish"):
        experiments.published_study("digits", ("baseline",), seeds=[1])
    with pytest.raises(ConfigMismatchError, match="epochs"):
        experiments.published_study("digits", ("baseline",), seeds=[0])
    with pytest.raises(ValueError, match="unknown method"):
        experiments.published_study("digits", ("resnet",), seeds=[0])


def test_the_shipped_pretrained_default_study_loads():
    out = experiments.published_study("glyphs", ("baseline", "batchformer"), seeds=range(5))
    assert all(len(hs) == 5 for hs in out.values()) and all("published" in h for h in out["baseline"])
    scratch = experiments.published_study("glyphs-scratch", ("batchformer",), seeds=[0, 1, 2], shared_head=False)
    assert all("module_head_R@1" in h["epochs"][-1] for h in scratch["batchformer"])
    steps = experiments.optimiser_steps(experiments.published_study("glyphs-scratch", ("baseline",), seeds=[0])["baseline"][0])
    per_epoch = steps // load_config("glyphs-scratch").epochs
    tail = experiments.published_study("glyphs-scratch", ("baseline",), seeds=[0, 1, 2], imbalance=10.0,
                                       steps_per_epoch=per_epoch)
    assert all(experiments.optimiser_steps(h) == steps for h in tail["baseline"])


def test_paired_verdict_follows_the_rule():
    base = [0.30, 0.40, 0.50, 0.60, 0.70]
    up = experiments.paired_verdict([b + 0.01 + 0.001 * i for i, b in enumerate(base)], base, "A − B")
    assert up.startswith("A − B, R@1: mean +0.012") and "supported (higher" in up and "below" not in up
    down = experiments.paired_verdict([b - 0.02 for b in base[:3]], base[:3])
    assert "supported (lower" in down and "n = 3, below the rule's 5 seeds" in down
    mixed = experiments.paired_verdict([0.31, 0.39, 0.52, 0.59, 0.70], base, metric="MAP@R")
    s = experiments.paired_summary([0.31, 0.39, 0.52, 0.59, 0.70], base)
    assert "MAP@R" in mixed and "holds 0" in mixed and f"from {s['low']:+.3f} to {s['high']:+.3f}" in mixed
    one = experiments.paired_verdict([0.5], [0.4])
    assert "1 seed (difference +0.100), no interval" in one


def test_a_shipped_name_spells_every_study_variant_and_the_flags_retrain_it():
    """The name, the command-line flags and the runs subfolder come from one table (VARIANTS): each
    variant gets its own file, so a study of λ never reads the λ = 0.5 runs as its own."""
    folder = experiments.run_folder("runs", "glyphs", "bgformer", 3, 0.2)
    plain = load_config("glyphs", out=str(folder), batch_module="bgformer")
    assert experiments.published_stem(folder, plain) == "glyphs-bgformer-noise0.2-seed3"
    assert experiments.variant_flags(plain) == [] and experiments.variant_dir("runs/study", plain).name == "study"
    cases = [({"imbalance": 10.0, "steps_per_epoch": 51}, "-imbalance10-steps51", ["--imbalance 10", "--steps-per-epoch 51"],
              "imbalance10-steps51"),
             ({"shared_head": False}, "-unshared-head", ["--unshared-head"], "unshared-head"),
             ({"plain_weight": 0.01}, "-alpha0.01", ["--plain-weight 0.01"], "alpha0.01"),
             ({"module_kwargs": {"lam": 1.0}}, "-lam1", ["--lam 1"], "lam1"),
             ({"module_kwargs": {"k": 16}}, "-k16", ["--k 16"], "k16")]
    names = set()
    for overrides, suffix, flags, subdir in cases:
        cfg = load_config("glyphs", out=str(folder), batch_module="bgformer", **overrides)
        stem = experiments.published_stem(folder, cfg)
        assert stem == "glyphs-bgformer-noise0.2-seed3" + suffix
        assert stem == experiments.published_stem(folder, config_dict(cfg))      # a history's config dict too
        assert experiments.variant_flags(cfg) == flags
        assert experiments.variant_dir("runs/study", cfg) == experiments.Path("runs/study") / subdir
        names.add(stem)
    assert len(names) == len(cases)


def test_the_command_line_trains_and_publishes_a_variant_that_published_study_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiments, "PUBLISHED", tmp_path / "published")
    argv = ["--preset", "smoke", "--runs", str(tmp_path / "runs"), "--seeds", "0", "1", "--epochs", "1",
            "--lam", "1", "--k", "4", "--publish"]
    assert experiments.main(argv + ["--methods", "baseline", "bgformer"]) == 2     # λ and K are BGFormer's options
    assert "--lam and --k are BGFormer's options" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert experiments.main(argv + ["--methods", "bgformer"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[:4]] == ["smoke", "published", "smoke", "published"]
    assert sorted(p.name for p in (tmp_path / "runs" / "lam1-k4").iterdir()) == [
        "smoke-bgformer-noise0-seed0", "smoke-bgformer-noise0-seed1"]
    shipped = sorted(p.name for p in (tmp_path / "published").iterdir())
    assert shipped == ["smoke-bgformer-noise0-seed0-lam1-k4.json", "smoke-bgformer-noise0-seed1-lam1-k4.json"]
    study = experiments.published_study("smoke", ("bgformer",), seeds=[0, 1], epochs=1,
                                        module_kwargs={"lam": 1.0, "k": 4})
    assert [h["config"]["module_kwargs"] for h in study["bgformer"]] == [{"lam": 1.0, "k": 4}] * 2
    assert "--lam 1 --k 4" in study["bgformer"][0]["published"]["command"]
    with pytest.raises(FileNotFoundError, match=r"--lam 0.5 --publish"):    # another λ is another study
        experiments.published_study("smoke", ("bgformer",), seeds=[0], epochs=1, module_kwargs={"lam": 0.5})


def test_shipped_prints_a_variant_against_its_plain_runs_and_trains_nothing(shelf, capsys):
    """--shipped reads the shelf only (the fixture makes training fail) and pairs each seed's variant run
    with the plain run of the same seed; the difference is checked by hand."""
    plain_r1, lam_r1 = [0.50, 0.52, 0.47], [0.53, 0.56, 0.49]
    for s, (p, t) in enumerate(zip(plain_r1, lam_r1)):
        _publish("bgformer", s, p)
        _publish("bgformer", s, t, module_kwargs={"lam": 1.0})
    argv = ["--preset", "digits", "--seeds", "0", "1", "2", "--methods", "bgformer", "--lam", "1", "--shipped"]
    assert experiments.main(argv) == 0
    out = capsys.readouterr().out
    diffs = [t - p for t, p in zip(lam_r1, plain_r1)]                   # +0.03, +0.04, +0.02
    mean = sum(diffs) / 3
    row = next(line for line in out.splitlines() if line.startswith("| 0 | bgformer |"))
    assert f"{mean:+.3f} [" in row and "(supported)" in row and row.endswith("| 3 |")
    assert "--lam 1 against the plain runs of the same method" in out
    assert experiments.main(argv + ["--publish"]) == 2
    assert "--shipped reads the shipped histories and trains nothing" in capsys.readouterr().err
    assert experiments.main(argv[:-1] + ["--seeds", "7", "8", "--shipped"]) == 2  # not shipped: a one-line error
    assert "no shipped history digits-bgformer-noise0-seed7-lam1.json" in capsys.readouterr().err
