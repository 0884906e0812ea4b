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


def test_non_finite_values_are_refused_naming_the_side_and_the_seed():
    with pytest.raises(ValueError, match=r"^paired_summary: treatment value 1 is nan, not a finite number \(a diverged "
                                         r"run or a damaged history\): drop that seed from both sides or rerun it$"):
        paired_summary([0.5, float("nan"), 0.4], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"^paired_summary: baseline value 2 is inf, not a finite number"):
        paired_summary([0.5, 0.5, 0.5], [0.5, 0.4, float("inf")])


def test_paired_p_edges_by_hand():
    from bgtutorial.stats import paired_p

    assert paired_summary([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])["p"] == 0.0          # every difference exactly +0.5
    assert paired_summary([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])["p"] == 1.0
    with pytest.raises(ValueError, match=r"^a paired t-test needs at least 2 paired seeds, got 1$"):
        paired_p(0.1, 0.0, 1)


def test_holm_accepts_p_values_of_exactly_0_and_1():
    from bgtutorial.stats import holm

    assert holm([0.0, 1.0, 0.02]) == pytest.approx([0.0, 1.0, 0.04])


def _history(seed, r1):
    return {"config": {"seed": seed}, "epochs": [{"R@1": r1, "MAP@R": r1 / 4}]}


def test_tables_name_a_repeated_seed_and_seeds_paired_out_of_order():
    from bgtutorial.stats import paired_table, paired_table_against

    base = [_history(s, 0.5) for s in (0, 1, 2)]
    twice = [_history(s, 0.6) for s in (0, 1, 1)]
    with pytest.raises(ValueError, match=r"^bgformer at label_noise 0 holds seed 1 2 times \(seeds \[0, 1, 1\]\): a rerun of one seed "
                                         r"is the same measurement, not another paired seed; pass each seed once$"):
        paired_table({0.0: {"baseline": base, "bgformer": twice}})
    with pytest.raises(ValueError, match=r"bgformer at label_noise 0's reference holds seed 2 3 times"):
        paired_table({0.0: {"baseline": [_history(2, 0.5)] * 3, "bgformer": base}})
    shuffled = [_history(s, 0.6) for s in (2, 0, 1)]
    with pytest.raises(ValueError, match=r"^bgformer at label_noise 0 pairs seeds \[2, 0, 1\] with its reference's \[0, 1, 2\]: run both "
                                         r"with the same seeds, in the same order$"):
        paired_table({0.0: {"baseline": base, "bgformer": shuffled}})
    with pytest.raises(ValueError, match=r"^bgformer at label_noise 0 pairs seeds \[0, 1, 2\] with its reference.s \[2, 0, 1\]"):
        paired_table_against({0.0: {"bgformer": base}}, {0.0: {"bgformer": shuffled}})
    no_config = [{"epochs": [{"R@1": 0.6, "MAP@R": 0.1}]} for _ in range(3)]      # unnamed seeds: not checked
    assert "bgformer − baseline" in paired_table({0.0: {"baseline": base, "bgformer": no_config}})
