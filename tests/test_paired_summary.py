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


def test_p_is_scipys_paired_t_test():
    from scipy import stats

    treatment = [0.581, 0.572, 0.572, 0.574, 0.576]
    baseline = [0.567, 0.568, 0.567, 0.568, 0.573]
    s = paired_summary(treatment, baseline)
    assert s["p"] == pytest.approx(stats.ttest_rel(treatment, baseline).pvalue, rel=1e-9)
    # the p-value and the interval agree: the 95 % interval excludes 0 exactly when p < 0.05
    for shift in (-0.02, -0.004, 0.0, 0.003, 0.01):
        t = [x + shift for x in treatment]
        s = paired_summary(t, baseline)
        assert s["p"] == pytest.approx(stats.ttest_rel(t, baseline).pvalue, rel=1e-9)
        assert (s["low"] > 0 or s["high"] < 0) == (s["p"] < 0.05)


def test_p_when_every_difference_is_equal():
    assert paired_summary([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])["p"] == 1.0
    assert paired_summary([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])["p"] == pytest.approx(0.0)


def _holm_by_hand(ps):
    """Holm's procedure written out: walk the sorted p-values, multiply the i-th smallest by m - i."""
    m = len(ps)
    ranked = sorted(range(m), key=lambda i: ps[i])
    adjusted, worst = {}, 0.0
    for i, idx in enumerate(ranked):
        value = ps[idx] * (m - i)
        if value > 1:
            value = 1.0
        if value < worst:
            value = worst
        worst = value
        adjusted[idx] = value
    return [adjusted[i] for i in range(m)]


def test_holm_against_a_hand_computation_and_a_worked_example():
    from bgtutorial.stats import holm

    ps = [0.030, 0.001, 0.2, 0.04, 0.012, 0.9, 0.04, 0.5]
    assert holm(ps) == pytest.approx(_holm_by_hand(ps))
    # a worked example: p = 0.01, 0.04, 0.03 -> 0.03, 0.06, 0.06 (3·0.01, then max(2·0.03, 0.03), max(1·0.04, 0.06))
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.6, 0.7]) == [1.0, 1.0]                                 # capped at 1
    assert holm([]) == [] and holm([0.02]) == [0.02]


def test_holm_is_monotone_and_never_below_the_raw_p():
    import random

    from bgtutorial.stats import holm

    rng = random.Random(0)
    for _ in range(200):
        ps = [rng.random() ** 3 for _ in range(rng.randint(1, 12))]
        adj = holm(ps)
        assert all(a >= p for a, p in zip(adj, ps)) and all(a <= 1 for a in adj)
        order = sorted(range(len(ps)), key=lambda i: ps[i])
        assert all(adj[order[i]] <= adj[order[i + 1]] for i in range(len(ps) - 1))
        assert adj == pytest.approx(_holm_by_hand(ps))


def test_holm_refuses_what_is_not_a_p_value():
    from bgtutorial.stats import holm

    for bad in ([0.1, -0.01], [1.5], [float("nan")]):
        with pytest.raises(ValueError, match="p-values"):
            holm(bad)
