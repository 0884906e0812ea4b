"""experiments.paired_summary: the one rule every study is read with (a paired Student-t interval)."""
import math
import statistics

import pytest

from bgtutorial.experiments import paired_summary


def test_paired_summary_against_a_hand_computation():
    treatment = [0.50, 0.52, 0.47, 0.55, 0.51]
    baseline = [0.48, 0.49, 0.46, 0.50, 0.50]
    s = paired_summary(treatment, baseline)
    diffs = [t - b for t, b in zip(treatment, baseline)]                  # 0.02 0.03 0.01 0.05 0.01
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)                          # t_{0.975, 4} from a table
    assert s["n"] == 5 and s["mean"] == pytest.approx(mean) and s["std"] == pytest.approx(sd)
    assert s["low"] == pytest.approx(mean - half) and s["high"] == pytest.approx(mean + half)
    assert s["differences"] == pytest.approx(diffs)
    assert s["low"] > 0                                                   # supported: the interval excludes 0


def test_pairing_is_what_makes_a_consistent_difference_visible():
    """Seeds that move both methods together: an unpaired reading sees overlap, the paired one does not."""
    baseline = [0.30, 0.40, 0.50, 0.60, 0.70]
    treatment = [b + 0.01 + 0.001 * i for i, b in enumerate(baseline)]
    s = paired_summary(treatment, baseline)
    assert s["low"] > 0 and statistics.stdev(baseline) > 10 * s["mean"]
    wider = paired_summary(treatment, baseline, confidence=0.99)
    assert wider["low"] < s["low"] and wider["high"] > s["high"]


def test_paired_summary_refuses_what_cannot_be_paired():
    with pytest.raises(ValueError, match="same seeds"):
        paired_summary([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least 2"):
        paired_summary([0.1], [0.2])
    with pytest.raises(ValueError, match="confidence"):
        paired_summary([0.1, 0.2], [0.1, 0.3], confidence=95)


def test_paired_table_reads_a_study_with_the_paired_rule():
    from bgtutorial.experiments import paired_table

    def runs(values):
        return [{"epochs": [{"R@1": v, "MAP@R": v / 2}]} for v in values]

    study = {0.0: {"baseline": runs([0.30, 0.40, 0.50]), "batchformer": runs([0.32, 0.42, 0.53]),
                   "bgformer": runs([0.20, 0.45, 0.50])}}
    table = paired_table(study).splitlines()
    assert len(table) == 4 and table[2].startswith("| 0 | batchformer − baseline | +0.023")
    assert "(supported)" in table[2] and "(interval holds 0)" in table[3]
    assert paired_table({0.0: {"baseline": runs([0.3]), "bgformer": runs([0.2])}}) == ""   # one seed: no interval
