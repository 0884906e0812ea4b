"""Issue 32, item 2: a study counts each seed once, refuses variants that do not apply or are out of
bounds before anything trains, and every variant is shipped under its own name."""
import json
import statistics

import pytest

from bgtutorial import experiments
from bgtutorial.config import load_config
from bgtutorial.stats import paired_table, paired_table_against
from bgtutorial.utils import UserError


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a refused study trained a run")

    monkeypatch.setattr(experiments, "train", refuse)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


REFUSED = [  # (argv, what the one line must say): nothing is read or trained
    (["--seeds", "0", "0", "0", "0", "0", "--shipped"], "--seeds: 0 is given twice"),
    (["--seeds", "0", "1", "--noise", "0", "0", "--shipped"], "--noise: 0 is given twice"),
    (["--seeds", "0", "1", "--noise", "0.2", "0.20", "--methods", "baseline"], "--noise: 0.2 is given twice"),
    (["--methods", "baseline", "baseline"], "--methods: baseline is given twice"),
    (["--methods", "bgformer", "--plain-weight", "-0.5"], "plain_weight=-0.5 must be in [0, 1]"),
    (["--methods", "bgformer", "--plain-weight", "1.5", "--shipped"], "plain_weight=1.5 must be in [0, 1]"),
    (["--methods", "baseline", "--plain-weight", "0.5"], "--plain-weight changes the batch module's stream"),
    (["--plain-weight", "0.5"], "--plain-weight changes the batch module's stream"),        # all three methods
    (["--methods", "baseline", "--unshared-head"], "--unshared-head changes the batch module's stream"),
    (["--methods", "batchformer", "--lam", "1"], "--lam and --k are BGFormer's options"),
    (["--methods", "bgformer", "--k", "0"], "k counts something"),
    (["--steps-per-epoch", "-1"], "steps_per_epoch=-1"),
    (["--imbalance", "0.5"], "imbalance is rho"),
    (["--seeds", "0", "--methods", "bgformer", "--plain-weight", "0.01", "--shipped"], "at least 2 seeds"),
]


@pytest.mark.parametrize("argv,expect", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_the_study_cli_refuses_duplicates_and_variants_that_do_not_apply(argv, expect, capsys, tmp_path, no_training):
    assert experiments.main(["--preset", "glyphs", "--runs", str(tmp_path / "runs"), *argv]) == 2
    assert expect in _one_line(capsys)
    assert not any(tmp_path.iterdir())                           # refused before anything was written


def test_the_api_studies_refuse_a_seed_level_or_method_given_twice(tmp_path, no_training):
    with pytest.raises(ValueError, match="seeds: 0 is given twice"):
        experiments.compare("digits", tmp_path, seeds=[0, 1, 0])
    with pytest.raises(ValueError, match="methods: bgformer is given twice"):
        experiments.compare("digits", tmp_path, methods=["bgformer", "baseline", "bgformer"])
    with pytest.raises(ValueError, match="noise_levels: 0 is given twice"):
        experiments.robustness_study("digits", tmp_path, noise_levels=[0, 0.0])
    with pytest.raises(ValueError, match="seeds: 2 is given twice"):
        experiments.published_study("glyphs", seeds=[2, 2])
    with pytest.raises(ValueError, match="values: 4 is given twice"):
        experiments.ablate("digits", tmp_path, "k", [4, 8, 4])
    assert not any(tmp_path.iterdir())


def _runs(seeds, values, method="batchformer"):
    return [{"config": {"seed": s, "batch_module": method}, "epochs": [{"R@1": v, "MAP@R": v / 2}]}
            for s, v in zip(seeds, values)]


def test_the_api_tables_refuse_a_seed_counted_twice_and_seeds_paired_out_of_order():
    base = _runs([0, 1, 2], [0.30, 0.40, 0.50], "none")
    with pytest.raises(ValueError, match="seed 0 3 times"):
        paired_table({0.0: {"baseline": base, "bgformer": _runs([0, 0, 0], [0.4, 0.4, 0.4])}})
    with pytest.raises(ValueError, match="seed 1 2 times"):
        paired_table({0.0: {"baseline": _runs([1, 1], [0.3, 0.3], "none"), "bgformer": _runs([1, 2], [0.4, 0.5])}})
    with pytest.raises(ValueError, match=r"pairs seeds \[2, 1, 0\] with its reference's \[0, 1, 2\]"):
        paired_table({0.0: {"baseline": base, "bgformer": _runs([2, 1, 0], [0.4, 0.4, 0.4])}})
    with pytest.raises(ValueError, match="seed 3 2 times"):
        paired_table_against({0.0: {"bgformer": _runs([3, 3], [0.4, 0.5])}}, {0.0: {"bgformer": _runs([3, 4], [0.4, 0.4])}})
    # distinct seeds in the same order: the mean difference is the hand-computed one
    treat = [0.32, 0.42, 0.53]
    row = paired_table({0.0: {"baseline": base, "batchformer": _runs([0, 1, 2], treat)}}).splitlines()[2]
    diffs = [t - b for t, b in zip(treat, [0.30, 0.40, 0.50])]
    assert row.startswith(f"| 0 | batchformer − baseline | {statistics.mean(diffs):+.3f}")


def test_plain_weight_is_bounded_and_belongs_to_the_batch_modules():
    for value in (-0.5, 1.5, -2.0):
        with pytest.raises(ValueError, match=f"plain_weight={value} must be in \\[0, 1\\]"):
            load_config("digits", batch_module="bgformer", plain_weight=value)
    with pytest.raises(ValueError, match="plain_weight=nan is not a finite number"):
        load_config("digits", batch_module="bgformer", plain_weight=float("nan"))
    with pytest.raises(ValueError, match="the baseline has no module half"):
        load_config("digits", plain_weight=0.5)
    for value in (-1.0, 0.0, 0.01, 1.0):                                 # -1: one loss over both halves
        assert load_config("digits", batch_module="batchformer", plain_weight=value).plain_weight == value


def test_every_variant_gets_its_own_name_steps_per_epoch_included(tmp_path):
    folder = experiments.run_folder(tmp_path, "glyphs", "baseline", 0)
    plain = experiments.published_stem(folder, load_config("glyphs"))
    steps = experiments.published_stem(folder, load_config("glyphs", steps_per_epoch=51))
    assert plain == "glyphs-baseline-noise0-seed0" and steps == plain + "-steps51"
    assert experiments.variant_dir(tmp_path, load_config("glyphs", steps_per_epoch=51)) == tmp_path / "steps51"


def test_each_shipped_history_is_filed_under_the_name_its_config_gives():
    """No shipped file carries another run's name: the name is rebuilt from the history's own config."""
    names = {}
    for path in sorted(experiments.PUBLISHED.glob("*.json")):
        c = json.loads(path.read_text())["config"]
        method = "baseline" if c["batch_module"] == "none" else c["batch_module"]
        folder = experiments.run_folder("runs", c["preset"], method, c["seed"], c["label_noise"], c["corrupt"])
        assert experiments.published_stem(folder, c) == path.stem, path.name
        key = json.dumps({k: v for k, v in c.items() if k not in ("out", "data_root", "device", "num_workers",
                                                                  "progress", "eval_batch_size")}, sort_keys=True)
        assert key not in names, f"{path.name} and {names.get(key)} hold the same config"
        names[key] = path.name
    assert len(names) > 100


def test_publishing_never_replaces_the_shipped_history_of_another_config(tmp_path, monkeypatch, capsys, no_training):
    """--epochs is not a study variant: a shorter run would be filed under the plain run's name."""
    from bgtutorial.checkpoint import config_dict

    monkeypatch.setattr(experiments, "PUBLISHED", tmp_path / "published")
    folder = experiments.run_folder(tmp_path / "runs", "digits", "baseline", 0)
    cfg = load_config("digits", out=str(folder), seed=0)
    history = {"config": config_dict(cfg), "epochs": [{"epoch": 1, "R@1": 0.5, "MAP@R": 0.2}], "steps": [1.0]}
    path = experiments.publish_history(history, experiments.published_stem(folder, cfg), "test",
                                       dest=experiments.PUBLISHED)
    before = path.read_text()
    argv = ["--preset", "digits", "--runs", str(tmp_path / "runs"), "--seeds", "0", "1", "--methods", "baseline",
            "--publish", "--epochs", str(cfg.epochs + 1)]
    assert experiments.main(argv) == 2
    assert f"{path} holds the shipped history of another config (epochs differ)" in _one_line(capsys)
    shorter = {**history, "config": config_dict(load_config("digits", out=str(folder), seed=0, epochs=1))}
    with pytest.raises(UserError, match="epochs differ"):
        experiments.publish_history(shorter, path.stem, "test", dest=experiments.PUBLISHED)
    assert path.read_text() == before and not (tmp_path / "runs").exists()
    experiments.publish_history(history, path.stem, "again", dest=experiments.PUBLISHED)   # the same config: fine
    assert "again" in path.read_text()
