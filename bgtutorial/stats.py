"""The one statistical rule of the tutorials: methods run with the same seeds are compared through
their per-seed differences (a paired Student-t interval); a claim is "supported" only when the
interval excludes 0. ``bgtutorial.experiments`` re-exports these for the notebooks.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

__all__ = ["paired_summary", "paired_verdict", "paired_table", "paired_table_against", "summarise", "holm",
           "paired_p"]


def paired_summary(treatment: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """The paired comparison of two methods run with the same seeds: per-seed differences treatment − baseline.

    Args:
        treatment, baseline: one value per seed (e.g. the final R@1), index i of both from seed i.
        confidence: of the two-sided Student-t interval on the mean difference.
    Returns:
        ``{"mean", "low", "high", "n", "std", "differences", "p"}``: the mean difference, its interval
        ``mean ± t_{(1+confidence)/2, n-1} · std / sqrt(n)`` (std of the differences, n − 1 in the
        denominator), the n differences and ``p``, the two-sided paired-t p-value of "mean difference
        0" (:func:`paired_p`). Alone, a claim is "supported" when the interval excludes 0; read in a
        family, by its Holm-adjusted p (:func:`holm`, :mod:`bgtutorial.claims`).
    """
    from scipy import stats   # the Student-t quantile

    if len(treatment) != len(baseline):
        raise ValueError(f"paired values need one per seed on both sides: got {len(treatment)} treatment and "
                         f"{len(baseline)} baseline values (run every method with the same seeds)")
    if len(treatment) < 2:
        raise ValueError(f"an interval needs at least 2 paired seeds, got {len(treatment)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    for side, values in (("treatment", treatment), ("baseline", baseline)):
        bad = [(i, v) for i, v in enumerate(values) if not math.isfinite(float(v))]
        if bad:
            raise ValueError(f"paired_summary: {side} value {bad[0][0]} is {bad[0][1]}, not a finite number (a "
                             "diverged run or a damaged history): drop that seed from both sides or rerun it")
    diffs = [float(t) - float(b) for t, b in zip(treatment, baseline)]
    n, mean, std = len(diffs), statistics.mean(diffs), statistics.stdev(diffs)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / n ** 0.5
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "std": std, "differences": diffs,
            "p": paired_p(mean, std, n)}


def paired_p(mean: float, std: float, n: int) -> float:
    """The two-sided p-value of the paired t-test: ``t = mean / (std / sqrt(n))`` on n − 1 degrees of
    freedom, ``p = 2 · P(T > |t|)``. With differences all equal (std 0) the test degenerates: p is 1
    when they are all 0 and 0 otherwise."""
    from scipy import stats

    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 paired seeds, got {n}")
    if std == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / (std / n ** 0.5)
    return float(2 * stats.t.sf(abs(t), n - 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    Sort the m p-values ascending, p_(1) ≤ … ≤ p_(m); the i-th adjusted value is
    ``max_{j ≤ i} min(1, (m − j + 1) · p_(j))``. Rejecting where the adjusted p is below α keeps the
    chance of any false "supported" in the family at most α, whatever the dependence between claims.
    The result is monotone in the p-values' order and capped at 1."""
    ps = [float(p) for p in p_values]
    for p in ps:
        if not 0 <= p <= 1:          # NaN fails this too
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def paired_verdict(treatment: Sequence[float], baseline: Sequence[float], name: str = "treatment − baseline",
                   metric: str = "R@1", confidence: float = 0.95, min_seeds: int = 5) -> str:
    """The project's rule read out in one sentence: :func:`paired_summary`'s mean and interval, then
    "supported" when the interval excludes 0, else what the interval allows.

    ``treatment``, ``baseline``: one value per seed, index i of both from seed i. With one seed there
    is no interval and the sentence says so; with fewer than ``min_seeds`` seeds it adds that the
    comparison is below the rule's bar.
    """
    n = len(treatment)
    if n < 2:
        diffs = ", ".join(f"{float(t) - float(b):+.3f}" for t, b in zip(treatment, baseline))
        return (f"{name}, {metric}: {n} seed (difference {diffs or 'none'}), no interval: the rule needs at least "
                f"{min_seeds} paired seeds")
    s = paired_summary(treatment, baseline, confidence)
    text = (f"{name}, {metric}: mean {s['mean']:+.3f}, {confidence:.0%} interval [{s['low']:+.3f}, {s['high']:+.3f}] "
            f"over {n} paired seeds: ")
    if s["low"] > 0 or s["high"] < 0:
        text += f"supported ({'higher' if s['mean'] > 0 else 'lower'} across the whole interval)"
    else:
        text += f"the interval holds 0, so no difference is supported; it allows any difference from {s['low']:+.3f} to {s['high']:+.3f}"
    if n < min_seeds:
        text += f" (n = {n}, below the rule's {min_seeds} seeds: a pointer, not a finding)"
    return text


def summarise(results: dict[str, list[dict[str, Any]]], metric: str = "R@1") -> dict[str, tuple[float, float, int]]:
    """``{method: (mean, std, n)}`` of the final-epoch metric over seeds (std 0 for one seed)."""
    out = {}
    for method, hs in results.items():
        vals = [h["epochs"][-1][metric] for h in hs]
        out[method] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))
    return out


def _seeds(hs: Sequence[dict[str, Any]], what: str) -> list[Any] | None:
    """The seeds of ``what``'s histories (read from their configs), ``None`` when a history has no config;
    ``ValueError`` when a seed repeats: two runs of one seed are one measurement, not two."""
    seeds = [h["config"].get("seed") if isinstance(h.get("config"), dict) else None for h in hs]
    if None in seeds:
        return None
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"{what} holds seed {repeated[0]} {seeds.count(repeated[0])} times (seeds {seeds}): a rerun "
                         "of one seed is the same measurement, not another paired seed; pass each seed once")
    return seeds


def _paired(hs: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]], what: str, metric: str) -> dict[str, float]:
    """:func:`paired_summary` of the final ``metric`` of ``hs`` against ``base``, after checking that both are
    of distinct seeds and pair seed i with seed i (when their configs name the seeds)."""
    seeds, base_seeds = _seeds(hs, what), _seeds(base, f"{what}'s reference")
    if seeds is not None and base_seeds is not None and seeds != base_seeds:
        raise ValueError(f"{what} pairs seeds {seeds} with its reference's {base_seeds}: run both with the same "
                         "seeds, in the same order")
    return paired_summary([h["epochs"][-1][metric] for h in hs], [h["epochs"][-1][metric] for h in base])


def _cell(s: dict[str, float]) -> str:
    """One table cell of a paired_summary: mean [low, high] and the rule's verdict."""
    verdict = "supported" if s["low"] > 0 or s["high"] < 0 else "interval holds 0"
    return f"{s['mean']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}] ({verdict})"


def paired_table(study: dict[float, dict[str, list[dict[str, Any]]]], field: str = "label_noise",
                 metrics: Sequence[str] = ("R@1", "MAP@R")) -> str:
    """A markdown table of each method − baseline, paired by seed (:func:`paired_summary`, 95 %), per level
    of ``field``; "supported" where the interval excludes 0. Empty when there is no baseline or one seed."""
    rows = []
    for level, res in study.items():
        if "baseline" not in res or len(res["baseline"]) < 2:
            continue
        for m, hs in res.items():
            if m == "baseline":
                continue
            cells = [_cell(_paired(hs, res["baseline"], f"{m} at {field} {level:g}", metric)) for metric in metrics]
            rows.append(f"| {level:g} | {m} − baseline | " + " | ".join(cells) + f" | {len(hs)} |")
    if not rows:
        return ""
    head = f"| {field.replace('_', ' ')} | paired by seed | " + " | ".join(f"{m}: mean [95 % t-interval]" for m in metrics)
    return "\n".join([head + " | seeds |", "|---|---|" + "---|" * len(metrics) + "---|", *rows])


def paired_table_against(study: dict[float, dict[str, list[dict[str, Any]]]],
                         reference: dict[float, dict[str, list[dict[str, Any]]]], field: str = "label_noise",
                         metrics: Sequence[str] = ("R@1", "MAP@R")) -> str:
    """A markdown table of each method's runs in ``study`` − the same method's runs in ``reference`` (a
    study variant against the plain runs), paired by seed (:func:`paired_summary`, 95 %), per level of
    ``field``; "supported" where the interval excludes 0."""
    rows = [f"| {field.replace('_', ' ')} | method | " + " | ".join(f"{m}: mean [95 % t-interval]" for m in metrics)
            + " | seeds |", "|---|---|" + "---|" * len(metrics) + "---|"]
    for level, res in reference.items():
        for method, base in res.items():
            cells = [_cell(_paired(study[level][method], base, f"{method} at {field} {level:g}", metric))
                     for metric in metrics]
            rows.append(f"| {level:g} | {method} | " + " | ".join(cells) + f" | {len(base)} |")
    return "\n".join(rows)
