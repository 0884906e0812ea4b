"""experiments.read_shipped: the shipped histories of a study, in seed order, and never a training run."""
import pytest

from bgtutorial import experiments


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("read_shipped must never train")

    monkeypatch.setattr(experiments, "train", refuse)


def test_reads_the_shipped_from_scratch_study_in_seed_order(no_training):
    out = experiments.read_shipped("glyphs-scratch", [2, 0, 1])
    assert list(out) == list(experiments.METHODS)
    for method, hs in out.items():
        assert [h["config"]["seed"] for h in hs] == [2, 0, 1]
        assert all(h["config"]["batch_module"] == experiments.METHODS[method] for h in hs)
        assert all(h["config"]["preset"] == "glyphs-scratch" and "published" in h for h in hs)
    s = experiments.paired_summary([h["epochs"][-1]["R@1"] for h in out["bgformer"]],
                                   [h["epochs"][-1]["R@1"] for h in out["baseline"]])
    assert s["n"] == 3


def test_a_seed_that_was_not_shipped_is_an_error_not_a_run(no_training):
    with pytest.raises(FileNotFoundError, match="glyphs-scratch-baseline-noise0-seed99"):
        experiments.read_shipped("glyphs-scratch", [0, 99], methods=["baseline"])
    with pytest.raises(ValueError, match="unknown method"):
        experiments.read_shipped("glyphs-scratch", [0], methods=["resnet"])


def test_another_budget_is_not_read(no_training):
    with pytest.warns(UserWarning, match="not used"), pytest.raises(FileNotFoundError):
        experiments.read_shipped("glyphs-scratch", [0], methods=["baseline"], epochs=3)
