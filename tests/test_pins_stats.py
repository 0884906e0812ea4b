"""Every readout of the paired rule (interval, verdict, tables, summaries) against a hand computation, on
increases, decreases, two-seed studies, levels without a baseline and other confidences.

The Student-t quantiles come from a printed table, not from scipy: t_{0.975, 1} = 12.7062,
t_{0.975, 2} = 4.3027, t_{0.975, 4} = 2.7764, t_{0.95, 4} = 2.1318, t_{0.995, 4} = 4.6041.
"""
import math

import pytest

from bgtutorial.experiments import paired_summary, paired_table, paired_table_against, paired_verdict, summarise

T = {(0.95, 1): 12.706204736174707, (0.95, 2): 4.302652729911275, (0.95, 4): 2.7764451051977987,
     (0.90, 4): 2.1318467863266499, (0.99, 4): 4.604094871415897}


def hand(treatment, baseline, confidence=0.95):
    """Mean, low, high of the paired t-interval, by hand."""
    d = [t - b for t, b in zip(treatment, baseline)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    half = T[(confidence, n - 1)] * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def runs(values, seeds=None, early=None):
    """Histories of one method: the last of three epochs holds ``values``; the two before it ``early`` (or 0)."""
    seeds = range(len(values)) if seeds is None else seeds
    before = {"R@1": early if early is not None else 0.0, "MAP@R": 0.0}
    return [{"config": {"seed": s}, "epochs": [before, before, {"R@1": v, "MAP@R": v / 2}]}
            for s, v in zip(seeds, values)]


BASE = [0.40, 0.45, 0.50, 0.42, 0.48]
UP = [0.43, 0.47, 0.54, 0.44, 0.52]                                  # +0.03 +0.02 +0.04 +0.02 +0.04
DOWN = [0.36, 0.42, 0.45, 0.39, 0.43]                                # -0.04 -0.03 -0.05 -0.03 -0.05


@pytest.mark.parametrize("confidence", [0.90, 0.95, 0.99])
def test_paired_summary_at_other_confidences(confidence):
    mean, low, high = hand(UP, BASE, confidence)
    s = paired_summary(UP, BASE, confidence=confidence)
    assert (s["mean"], s["low"], s["high"]) == pytest.approx((mean, low, high), abs=1e-12)


def test_paired_summary_of_two_seeds_and_of_a_decrease():
    s = paired_summary([0.50, 0.46], [0.40, 0.41])                   # differences 0.10, 0.05
    mean, low, high = hand([0.50, 0.46], [0.40, 0.41])
    assert s["n"] == 2 and (s["mean"], s["low"], s["high"]) == pytest.approx((mean, low, high), abs=1e-12)
    assert s["std"] == pytest.approx(0.05 / math.sqrt(2), abs=1e-12)
    d = paired_summary(DOWN, BASE)
    assert (d["mean"], d["low"], d["high"]) == pytest.approx(hand(DOWN, BASE), abs=1e-12) and d["high"] < 0


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 1.5])
def test_confidence_outside_0_1_is_refused(confidence):
    with pytest.raises(ValueError, match="confidence"):
        paired_summary(UP, BASE, confidence=confidence)
    with pytest.raises(ValueError, match="confidence"):
        paired_verdict(UP, BASE, confidence=confidence)


def test_verdict_on_an_increase_and_on_a_decrease():
    mean, low, high = hand(UP, BASE)
    up = paired_verdict(UP, BASE, "A − B")
    assert up == (f"A − B, R@1: mean {mean:+.3f}, 95% interval [{low:+.3f}, {high:+.3f}] over 5 paired seeds: "
                  "supported (higher across the whole interval)")
    mean, low, high = hand(DOWN, BASE)
    down = paired_verdict(DOWN, BASE, "A − B", metric="MAP@R")
    assert down == (f"A − B, MAP@R: mean {mean:+.3f}, 95% interval [{low:+.3f}, {high:+.3f}] over 5 paired seeds: "
                    "supported (lower across the whole interval)")


def test_an_interval_of_exactly_zero_holds_zero():
    """Identical runs: every difference 0, so the interval is [0, 0], which does not exclude 0."""
    v = paired_verdict(BASE, BASE)
    assert v == ("treatment − baseline, R@1: mean +0.000, 95% interval [+0.000, +0.000] over 5 paired seeds: the "
                 "interval holds 0, so no difference is supported; it allows any difference from +0.000 to +0.000")
    table = paired_table({0.0: {"baseline": runs(BASE), "same": runs(BASE)}}, metrics=("R@1",)).splitlines()
    assert table[2] == "| 0 | same − baseline | +0.000 [+0.000, +0.000] (interval holds 0) | 5 |"


def test_verdict_reads_its_confidence():
    """An effect supported at 90 % whose 99 % interval holds 0: the sentence follows the confidence asked for."""
    base = [0.40, 0.45, 0.50, 0.42, 0.48]
    treat = [b + d for b, d in zip(base, [0.03, 0.005, 0.02, 0.01, 0.03])]
    m90, l90, h90 = hand(treat, base, 0.90)
    m99, l99, h99 = hand(treat, base, 0.99)
    assert l90 > 0 > l99                                              # the hand computation: two verdicts
    v90, v99 = paired_verdict(treat, base, confidence=0.90), paired_verdict(treat, base, confidence=0.99)
    assert f"90% interval [{l90:+.3f}, {h90:+.3f}]" in v90 and v90.endswith("(higher across the whole interval)")
    assert f"99% interval [{l99:+.3f}, {h99:+.3f}]" in v99
    assert v99.endswith(f"it allows any difference from {l99:+.3f} to {h99:+.3f}")


def test_verdict_of_two_seeds_has_an_interval_and_the_below_the_bar_note():
    mean, low, high = hand([0.50, 0.46], [0.40, 0.41])
    v = paired_verdict([0.50, 0.46], [0.40, 0.41], "A − B")
    assert v == (f"A − B, R@1: mean {mean:+.3f}, 95% interval [{low:+.3f}, {high:+.3f}] over 2 paired seeds: "
                 f"the interval holds 0, so no difference is supported; it allows any difference from {low:+.3f} "
                 f"to {high:+.3f} (n = 2, below the rule's 5 seeds: a pointer, not a finding)")
    assert paired_verdict([0.5], [0.4], "A − B") == ("A − B, R@1: 1 seed (difference +0.100), no interval: "
                                                      "the rule needs at least 5 paired seeds")
    assert paired_verdict([], []) == ("treatment − baseline, R@1: 0 seed (difference none), no interval: "
                                      "the rule needs at least 5 paired seeds")
    assert "below the rule's 3 seeds" not in paired_verdict(UP[:3], BASE[:3], min_seeds=3)
    assert "(n = 3, below the rule's 4 seeds" in paired_verdict(UP[:3], BASE[:3], min_seeds=4)


def test_summarise_against_a_hand_computation():
    out = summarise({"a": runs([0.2, 0.4, 0.9]), "b": runs([0.7]), "c": runs([0.3, 0.6])})   # R@1 by default
    mean = 0.5
    sd = math.sqrt(((0.2 - mean) ** 2 + (0.4 - mean) ** 2 + (0.9 - mean) ** 2) / 2)
    assert out["a"] == pytest.approx((mean, sd, 3), abs=1e-12) and out["b"] == (0.7, 0.0, 1)
    assert out["c"] == pytest.approx((0.45, 0.15 * math.sqrt(2), 2), abs=1e-12)
    assert summarise({"a": runs([0.2, 0.4, 0.9])}, "MAP@R")["a"] == pytest.approx((0.25, sd / 2, 3), abs=1e-12)


def _cell(t, b):
    mean, low, high = hand(t, b)
    verdict = "supported" if low > 0 or high < 0 else "interval holds 0"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] ({verdict})"


def test_paired_table_reads_every_level_with_a_baseline_and_the_last_epoch():
    """Levels in order: one without a baseline (skipped, the next still read), one with two seeds (read),
    one with one baseline seed (skipped); an earlier epoch of 0.9 must not be read."""
    study = {0.0: {"bgformer": runs([0.3, 0.4])},
             0.2: {"baseline": runs([0.40, 0.41], early=0.9), "bgformer": runs([0.50, 0.46], early=0.9)},
             0.4: {"baseline": runs([0.3]), "bgformer": runs([0.2])},
             0.6: {"baseline": runs(BASE), "bgformer": runs(DOWN), "batchformer": runs(UP)}}
    lines = paired_table(study, metrics=("R@1",)).splitlines()
    assert lines[0] == "| label noise | paired by seed | R@1: mean [95 % t-interval] | seeds |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2:] == [f"| 0.2 | bgformer − baseline | {_cell([0.50, 0.46], [0.40, 0.41])} | 2 |",
                         f"| 0.6 | bgformer − baseline | {_cell(DOWN, BASE)} | 5 |",
                         f"| 0.6 | batchformer − baseline | {_cell(UP, BASE)} | 5 |"]
    both = paired_table({0.6: study[0.6]}, field="corrupt_images").splitlines()
    assert both[0].startswith("| corrupt images | paired by seed | R@1: mean [95 % t-interval] | MAP@R: mean")
    half = [v / 2 for v in DOWN], [v / 2 for v in BASE]
    assert both[2] == f"| 0.6 | bgformer − baseline | {_cell(DOWN, BASE)} | {_cell(*half)} | 5 |"
    assert paired_table({0.0: {"bgformer": runs([0.3, 0.4])}}) == ""


def test_paired_table_against_reads_the_last_epoch_of_each_method():
    plain = {0.2: {"baseline": runs(BASE, early=0.9), "bgformer": runs([0.40, 0.41], early=0.1)}}
    variant = {0.2: {"baseline": runs(UP, early=0.1), "bgformer": runs([0.50, 0.46], early=0.9)}}
    lines = paired_table_against(variant, plain, metrics=("R@1",)).splitlines()
    assert lines == ["| label noise | method | R@1: mean [95 % t-interval] | seeds |", "|---|---|---|---|",
                     f"| 0.2 | baseline | {_cell(UP, BASE)} | 5 |",
                     f"| 0.2 | bgformer | {_cell([0.50, 0.46], [0.40, 0.41])} | 2 |"]
    both = paired_table_against(variant, plain, field="corrupt").splitlines()
    half = [v / 2 for v in UP], [v / 2 for v in BASE]
    assert both[0] == "| corrupt | method | R@1: mean [95 % t-interval] | MAP@R: mean [95 % t-interval] | seeds |"
    assert both[1] == "|---|---|---|---|---|"
    assert both[2] == f"| 0.2 | baseline | {_cell(UP, BASE)} | {_cell(*half)} | 5 |"
