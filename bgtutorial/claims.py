"""The claims the CPU studies test, declared as one family before any run is read, and their verdicts.

Each claim is a paired comparison over the same seeds (:func:`bgtutorial.stats.paired_summary`): a
treatment and a baseline, each either one set of runs (an :class:`Arm`) or the difference of two
(a gap between methods at a noise level, say). The claims are read together, so "supported" is decided
by Holm's adjusted p over the whole family (:func:`bgtutorial.stats.holm`), never by a lone interval;
a claim whose runs are not shipped yet keeps its place in the family with p = 1, so the correction
does not shrink when a study is missing. Every readout also says what the (unadjusted) 95 % interval
rules out, whether the runs were truly paired (equal epoch-0 metrics at each seed, :mod:`bgtutorial.rng`),
whether one seed carries the verdict, and the neighbouring metrics.

``python -m bgtutorial.claims`` prints the table from the shipped histories, training nothing.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .stats import holm, paired_summary
from .utils import CLI_ERRORS, error_line

__all__ = ["Arm", "Claim", "FAMILY", "SEEDS", "NEIGHBOURS", "evaluate_family", "family_table", "neighbours_table",
           "plan_arms", "read_arm"]

#: the seeds every study of the family runs (the project's rule: at least 5)
SEEDS = (0, 1, 2, 3, 4)
#: epoch-0 metrics closer than this count as equal: the same network scored in another process can differ
#: in the last float32 digits of MAP@R (seen: 7e-7), while another head moves R@1 by 1e-3 or more
PAIRING_TOLERANCE = 1e-5
#: the metrics reported beside the one the verdict is read on
NEIGHBOURS = ("R@2", "R@4", "R@8", "MAP@R", "NMI")


@dataclass(frozen=True)
class Arm:
    """One set of runs of a study: a method, its noise level and the config fields its variant changes
    (``variant``: ``(field, value)`` pairs; BGFormer's options as ``("module_kwargs", (("lam", 1.0),))``)."""
    method: str
    label_noise: float = 0.0
    corrupt: float = 0.0
    variant: tuple[tuple[str, Any], ...] = ()

    def overrides(self) -> dict[str, Any]:
        out = {}
        for name, value in self.variant:
            out[name] = dict(value) if name == "module_kwargs" else value
        return out

    def describe(self) -> str:
        parts = [self.method]
        if self.label_noise:
            parts.append(f"{self.label_noise:.0%} flipped labels")
        if self.corrupt:
            parts.append(f"{self.corrupt:.0%} corrupted images")
        for name, value in self.variant:
            parts += ([f"{k} = {v:g}" for k, v in value] if name == "module_kwargs" else [f"{name} = {value}"])
        return ", ".join(parts)


def _bg(**kwargs: float) -> tuple[tuple[str, Any], ...]:
    """The variant of BGFormer's module options (``lam``, ``k``)."""
    return (("module_kwargs", tuple(sorted(kwargs.items()))),)


_BASE, _BF, _BG = Arm("baseline"), Arm("batchformer"), Arm("bgformer")
_LT = (("imbalance", 10.0), ("steps_per_epoch", 51))


@dataclass(frozen=True)
class Claim:
    """A claim of a paper as a paired comparison: ``treatment − baseline``, where each side is one arm,
    or two arms ``(a, b)`` read as the per-seed difference ``a − b``. ``expect``: the sign the paper's
    claim predicts ("higher" or "lower")."""
    key: str
    source: str
    statement: str
    treatment: tuple[Arm, ...]
    baseline: tuple[Arm, ...]
    expect: str = "higher"

    def arms(self) -> tuple[Arm, ...]:
        return self.treatment + self.baseline

    def comparison(self) -> str:
        def side(arms: tuple[Arm, ...]) -> str:
            return arms[0].describe() if len(arms) == 1 else f"({arms[0].describe()} − {arms[1].describe()})"
        return f"{side(self.treatment)} − {side(self.baseline)}"


#: the family: every claim the CPU studies test, declared before the runs are read
FAMILY: tuple[Claim, ...] = (
    Claim("bf-main", "BatchFormer", "BatchFormer improves retrieval of unseen classes", (_BF,), (_BASE,)),
    Claim("bf-longtail", "BatchFormer (a)", "BatchFormer helps more on long-tailed training data",
          (Arm("batchformer", variant=_LT), Arm("baseline", variant=_LT)), (_BF, _BASE)),
    Claim("bf-shared-head", "BatchFormer (b)", "the shared head is what makes dropping the module safe",
          (_BF,), (Arm("batchformer", variant=(("shared_head", False),)),)),
    Claim("bf-shared-head-one-loss", "BatchFormer (b)", "the shared head beats an unshared one under the same "
          "loss (one loss over the doubled batch)", (_BF,),
          (Arm("batchformer", variant=(("shared_head", False), ("module_loss", "one"))),)),
    Claim("bg-main", "BGFormer", "BGFormer improves retrieval of unseen classes", (_BG,), (_BASE,)),
    Claim("bg-flipped", "BGFormer", "BGFormer's gain grows with flipped labels (40 %)",
          (Arm("bgformer", 0.4), Arm("baseline", 0.4)), (_BG, _BASE)),
    Claim("bg-corrupted", "BGFormer", "BGFormer's gain grows with corrupted images (40 %)",
          (Arm("bgformer", corrupt=0.4), Arm("baseline", corrupt=0.4)), (_BG, _BASE)),
    Claim("bg-label-path", "BGFormer", "the label path (λ = 0.5) beats the visual path alone (λ = 1)",
          (_BG,), (Arm("bgformer", variant=_bg(lam=1.0)),)),
    Claim("bg-sparse", "BGFormer", "sparse attention (K = 8) beats full attention (K = B = 120)",
          (_BG,), (Arm("bgformer", variant=_bg(k=120)),)),
    Claim("bg-alpha", "BGFormer follow-up", "α = 0.01 (the follow-up's plain-half weight) beats α = 0.5",
          (Arm("bgformer", variant=(("plain_weight", 0.01),)),), (Arm("bgformer", variant=(("plain_weight", 0.5),)),)),
    Claim("bg-alpha-label-path", "our reading", "α = 0.01's loss comes from the label path: without it (λ = 1) "
          "α = 0.01 does better than with it", (Arm("bgformer", variant=(("plain_weight", 0.01),) + _bg(lam=1.0)),),
          (Arm("bgformer", variant=(("plain_weight", 0.01),)),)),
)

#: arms the notebooks draw that no claim reads (the middle noise level of the robustness curves)
PICTURE_ARMS: tuple[Arm, ...] = tuple(Arm(m, 0.2) for m in ("baseline", "batchformer", "bgformer")) + (
    Arm("batchformer", 0.4), Arm("batchformer", corrupt=0.4))


def plan_arms(family: Sequence[Claim] = FAMILY) -> list[Arm]:
    """Every arm the family and the notebooks' pictures read, each once, in declaration order."""
    seen: dict[Arm, None] = {}
    for claim in family:
        for arm in claim.arms():
            seen.setdefault(arm, None)
    for arm in PICTURE_ARMS:
        seen.setdefault(arm, None)
    return list(seen)


def read_arm(arm: Arm, seeds: Sequence[int], preset: str = "glyphs") -> list[dict[str, Any]]:
    """The shipped histories of ``arm`` at ``seeds`` (raises when one is missing or of another config)."""
    from .experiments import published_study

    return published_study(preset, (arm.method,), tuple(seeds), arm.label_noise, arm.corrupt,
                           **arm.overrides())[arm.method]


def _side(arms: tuple[Arm, ...], runs: dict[Arm, list[dict[str, Any]]], metric: str) -> list[float]:
    """The per-seed final ``metric`` of one arm, or of two arms' difference ``a − b``."""
    def value(h: dict[str, Any]) -> float:
        return float(h["epochs"][-1][metric])

    first = [value(h) for h in runs[arms[0]]]
    if len(arms) == 1:
        return first
    return [a - value(h) for a, h in zip(first, runs[arms[1]])]


def _current_backbone(runs: dict[Arm, list[dict[str, Any]]]) -> bool:
    """True when every history records the backbone weights the package ships now (their sha256)."""
    from .models import weights_record

    for hs in runs.values():
        for h in hs:
            cfg = h.get("config", {})
            pretrained = bool(cfg.get("pretrained"))       # a run from scratch needs no record
            if h.get("backbone_weights", "unrecorded" if pretrained else None) != weights_record(
                    cfg.get("backbone", ""), pretrained):
                return False
    return True


def _paired_at_start(claim: Claim, runs: dict[Arm, list[dict[str, Any]]]) -> bool:
    """True when every arm of the claim has the same epoch-0 metrics at each seed (a true pairing)."""
    arms = claim.arms()
    for i in range(len(runs[arms[0]])):
        starts = [runs[arm][i].get("initial") for arm in arms]
        if any(s is None or s.keys() != starts[0].keys() for s in starts):
            return False
        if any(abs(s[k] - starts[0][k]) > PAIRING_TOLERANCE for s in starts for k in s):
            return False
    return True


@dataclass
class Reading:
    """One claim's readout (see :func:`evaluate_family`)."""
    claim: Claim
    summary: dict[str, Any] | None = None
    missing: str = ""
    p_holm: float = 1.0
    paired: bool | None = None
    current_backbone: bool | None = None
    fragile_seeds: tuple[int, ...] = ()
    neighbours: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = ()

    @property
    def p(self) -> float:
        return 1.0 if self.summary is None else self.summary["p"]


def evaluate_family(family: Sequence[Claim] = FAMILY, seeds: Sequence[int] = SEEDS, metric: str = "R@1",
                    reader: Callable[[Arm, Sequence[int]], list[dict[str, Any]]] | None = None) -> list[Reading]:
    """Read every claim of ``family`` at ``seeds`` (``reader(arm, seeds)``: the histories, by default the
    shipped ones) and adjust the p-values with Holm over the whole family; a claim whose runs cannot be
    read keeps p = 1 and says why."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}: one run counted twice is not two seeds")
    reader = reader or read_arm
    readings = []
    for claim in family:
        r = Reading(claim, seeds=tuple(seeds))
        try:
            runs = {arm: reader(arm, seeds) for arm in claim.arms()}
        except FileNotFoundError:
            r.missing = "no shipped histories"
            readings.append(r)
            continue
        except (ValueError, KeyError) as err:
            r.missing = error_line(err)
            readings.append(r)
            continue
        r.summary = paired_summary(_side(claim.treatment, runs, metric), _side(claim.baseline, runs, metric))
        r.paired = _paired_at_start(claim, runs)
        r.current_backbone = _current_backbone(runs)
        for name in NEIGHBOURS:
            if all(name in h["epochs"][-1] for hs in runs.values() for h in hs):
                r.neighbours[name] = paired_summary(_side(claim.treatment, runs, name),
                                                    _side(claim.baseline, runs, name))
        readings.append(r)
    adjusted = holm([r.p for r in readings])
    for r, p in zip(readings, adjusted):
        r.p_holm = p
    for i, r in enumerate(readings):
        r.fragile_seeds = _fragile_seeds(r, readings, i)
    return readings


def _fragile_seeds(r: Reading, readings: list[Reading], index: int, alpha: float = 0.05) -> tuple[int, ...]:
    """For a supported verdict: the seeds without any one of which (the family's other p-values fixed) it
    would no longer be supported; empty when it survives leaving out any one seed, or is not supported."""
    if r.summary is None or r.p_holm >= alpha or len(r.seeds) < 4:
        return ()
    diffs = r.summary["differences"]
    out = []
    for i, seed in enumerate(r.seeds):
        rest = diffs[:i] + diffs[i + 1:]
        ps = [x.p for x in readings]
        ps[index] = paired_summary(rest, [0.0] * len(rest))["p"]
        if holm(ps)[index] >= alpha:
            out.append(seed)
    return tuple(out)


def verdict(r: Reading, alpha: float = 0.05) -> str:
    """The family-wise verdict in words, and what the unadjusted interval rules out."""
    if r.summary is None:
        return f"not run yet ({r.missing})"
    s = r.summary
    if r.p_holm < alpha:
        sign = "higher" if s["mean"] > 0 else "lower"
        text = f"supported, {sign}" + ("" if sign == r.claim.expect else " (against the claim)")
        text += f": the effect lies in [{s['low']:+.3f}, {s['high']:+.3f}]"
    else:
        text = (f"not supported: rules out effects below {s['low']:+.3f} and above {s['high']:+.3f}"
                if s["low"] <= 0 <= s["high"] else
                f"not supported after Holm (the lone interval [{s['low']:+.3f}, {s['high']:+.3f}] excludes 0)")
    if r.fragile_seeds:
        which = ", ".join(str(seed) for seed in r.fragile_seeds)
        text += (f"; fragile: without seed {which} it would not be supported" if len(r.fragile_seeds) == 1 else
                 f"; fragile: without any one of seeds {which} it would not be supported")
    if s["n"] < 5:
        text += f" (n = {s['n']}, below the rule's 5 seeds)"
    if r.paired is False:
        text += "; the arms' epoch-0 metrics differ: not truly paired"
    if r.current_backbone is False:
        text += "; trained from another backbone than the one shipped, or one its histories do not name"
    return text


def family_table(readings: Sequence[Reading], metric: str = "R@1") -> str:
    """The family as a markdown table: the comparison, its mean [95 % interval], raw and Holm p, verdict."""
    rows = [f"| claim | comparison | {metric} difference [95 % interval] | p | Holm p | verdict |",
            "|---|---|---|---|---|---|"]
    for r in readings:
        s = r.summary
        cell = "–" if s is None else f"{s['mean']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]"
        p = "–" if s is None else f"{s['p']:.3f}"
        holm_p = f"{r.p_holm:.3f}" if s is not None else "(1)"
        rows.append(f"| {r.claim.statement} ({r.claim.source}) | {r.claim.comparison()} | {cell} | {p} | {holm_p} "
                    f"| {verdict(r)} |")
    return "\n".join(rows)


def neighbours_table(readings: Sequence[Reading]) -> str:
    """The neighbouring metrics of each claim: mean difference [95 % interval], unadjusted."""
    rows = ["| claim | " + " | ".join(NEIGHBOURS) + " |", "|---|" + "---|" * len(NEIGHBOURS)]
    for r in readings:
        cells = []
        for name in NEIGHBOURS:
            s = r.neighbours.get(name)
            cells.append("–" if s is None else f"{s['mean']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]")
        rows.append(f"| {r.claim.key} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bgtutorial.claims",
                                description="The declared family of claims, read from the shipped histories with "
                                            "Holm's correction (trains nothing).")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--metric", default="R@1")
    a = p.parse_args(argv)
    try:
        readings = evaluate_family(seeds=a.seeds, metric=a.metric)
    except CLI_ERRORS as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    print(family_table(readings, a.metric))
    print("\nNeighbouring metrics (each a paired mean difference [95 % interval], unadjusted):\n")
    print(neighbours_table(readings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
