"""The declared family of claims: Holm over the whole family, missing claims kept at p = 1, the pairing
check on epoch-0 metrics, the one-seed check, and every arm a distinct, loadable config."""
import pytest

from bgtutorial import claims
from bgtutorial.claims import FAMILY, Arm, Claim, evaluate_family, family_table, plan_arms, verdict
from bgtutorial.config import load_config
from bgtutorial.experiments import METHODS, published_stem, run_folder, variant_dir
from bgtutorial.stats import holm, paired_summary


def _history(r1, start=0.40, extra=0.0):
    last = {"R@1": r1, "R@2": r1 + 0.1, "R@4": r1 + 0.2, "R@8": r1 + 0.3, "MAP@R": r1 / 4 + extra, "NMI": 0.6}
    return {"initial": {"R@1": start}, "epochs": [last]}


def _reader(values, starts=None):
    """A reader serving made-up final R@1 per arm and seed (``values[arm]``: one per seed)."""
    def read(arm, seeds):
        if arm not in values:
            raise FileNotFoundError(f"no runs of {arm}")
        return [_history(values[arm][s], start=(starts or {}).get(arm, [0.40] * 9)[s]) for s in seeds]
    return read


A, B, C = Arm("baseline"), Arm("batchformer"), Arm("bgformer")
TWO = (Claim("c1", "x", "B beats A", (B,), (A,)), Claim("c2", "x", "C beats A", (C,), (A,)))


def test_holm_is_applied_over_the_whole_family_and_a_missing_claim_still_counts():
    seeds = (0, 1, 2, 3, 4)
    vals = {A: [0.50, 0.51, 0.52, 0.50, 0.49], B: [0.508, 0.519, 0.527, 0.509, 0.497]}
    fam = TWO + (Claim("c3", "x", "never run", (Arm("bgformer", 0.2),), (A,)),)
    rs = evaluate_family(fam, seeds, reader=_reader(vals))
    alone = paired_summary(vals[B], vals[A])
    assert rs[0].summary["p"] == pytest.approx(alone["p"])
    # c2 and c3 cannot be read: p = 1 each, and c1's adjusted p is Holm over three claims
    assert rs[1].summary is None and rs[2].summary is None and "no shipped" in verdict(rs[1])
    assert rs[0].p_holm == pytest.approx(holm([alone["p"], 1.0, 1.0])[0]) == pytest.approx(min(1, 3 * alone["p"]))
    assert "not run yet" in family_table(rs)


def test_a_lone_interval_that_excludes_zero_is_not_supported_after_holm():
    seeds = (0, 1, 2, 3, 4)
    base = [0.567, 0.568, 0.567, 0.568, 0.573]
    vals = {A: base, C: [0.581, 0.572, 0.572, 0.574, 0.576], B: base}   # c1: B equals A (p = 1)
    fam = TWO + tuple(Claim(f"n{i}", "x", "nothing", (B,), (A,)) for i in range(6))
    rs = evaluate_family(fam, seeds, reader=_reader(vals))
    c2 = rs[1]
    assert c2.summary["low"] > 0 and c2.summary["p"] < 0.05            # alone, "supported"
    assert c2.p_holm == pytest.approx(min(1.0, 8 * c2.summary["p"])) and c2.p_holm > 0.05
    assert verdict(c2).startswith("not supported after Holm")
    assert verdict(rs[0]).startswith("not supported: rules out effects below")


def test_supported_against_the_claim_and_one_seed_that_carries_it():
    seeds = (0, 1, 2, 3, 4)
    vals = {A: [0.5] * 5, B: [0.40, 0.401, 0.399, 0.40, 0.4005]}
    rs = evaluate_family(TWO[:1], seeds, reader=_reader(vals))
    assert rs[0].p_holm < 0.05 and "supported, lower (against the claim)" in verdict(rs[0])
    assert rs[0].fragile_seeds == ()
    # five small gains, p about 0.02: without seed 2 (p 0.065, the largest leave-one-out p) it would fail
    gains = [0.012, 0.004, 0.005, 0.003, 0.0045]
    vals = {A: [0.5] * 5, B: [0.5 + g for g in gains]}
    r = evaluate_family(TWO[:1], seeds, reader=_reader(vals))[0]
    loo = []
    for i in range(5):     # leave-one-out by hand
        rest = gains[:i] + gains[i + 1:]
        loo.append(paired_summary([0.5 + g for g in rest], [0.5] * 4)["p"])
    assert r.p_holm < 0.05 and r.fragile_seeds == tuple(i for i, p in enumerate(loo) if p >= 0.05) == (1, 2, 4)
    assert "without any one of seeds 1, 2, 4 it would not be supported" in verdict(r)


def test_the_pairing_check_reads_epoch0_metrics():
    seeds = (0, 1, 2, 3, 4)
    vals = {A: [0.5] * 5, B: [0.51, 0.5, 0.52, 0.5, 0.49]}
    paired = evaluate_family(TWO[:1], seeds, reader=_reader(vals))[0]
    assert paired.paired is True and "not truly paired" not in verdict(paired)
    starts = {A: [0.41] * 5, B: [0.41, 0.41, 0.409, 0.41, 0.41]}
    unpaired = evaluate_family(TWO[:1], seeds, reader=_reader(vals, starts))[0]
    assert unpaired.paired is False and "not truly paired" in verdict(unpaired)
    rounding = {A: [0.41] * 5, B: [0.41, 0.41, 0.41 + 7e-7, 0.41, 0.41]}        # the last float32 digits
    assert evaluate_family(TWO[:1], seeds, reader=_reader(vals, rounding))[0].paired is True


def test_histories_from_another_backbone_are_flagged():
    from bgtutorial.models import weights_record

    seeds = (0, 1, 2, 3, 4)
    vals = {A: [0.5] * 5, B: [0.51, 0.5, 0.52, 0.5, 0.49]}
    current = weights_record("smallcnn", True)

    def reader(arm, seeds, record=current):
        hs = _reader(vals)(arm, seeds)
        for h in hs:
            h["config"] = {"backbone": "smallcnn", "pretrained": True}
            h["backbone_weights"] = record
        return hs
    assert evaluate_family(TWO[:1], seeds, reader=reader)[0].current_backbone is True
    old = {"file": "glyph-smallcnn.pt", "sha256": "e648e0f3"}
    r = evaluate_family(TWO[:1], seeds, reader=lambda a, s: reader(a, s, old))[0]
    assert r.current_backbone is False and "another backbone than the one shipped" in verdict(r)
    def unrecorded(arm, seeds):                   # pretrained runs from before the record existed
        hs = _reader(vals)(arm, seeds)
        for h in hs:
            h["config"] = {"backbone": "smallcnn", "pretrained": True}
        return hs
    assert evaluate_family(TWO[:1], seeds, reader=unrecorded)[0].current_backbone is False
    assert evaluate_family(TWO[:1], seeds, reader=_reader(vals))[0].current_backbone is True   # from scratch


def test_duplicate_seeds_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        evaluate_family(TWO, (0, 0, 1), reader=_reader({A: [0.5] * 2, B: [0.5] * 2, C: [0.5] * 2}))


def test_every_arm_of_the_plan_is_a_valid_config_with_its_own_shipped_name():
    arms = plan_arms()
    assert len(arms) == len(set(arms))
    assert all(arm in arms for claim in FAMILY for arm in claim.arms())
    names = set()
    for arm in arms:
        assert arm.method in METHODS
        cfg = load_config("glyphs", batch_module=METHODS[arm.method], label_noise=arm.label_noise,
                          corrupt=arm.corrupt, seed=0, **arm.overrides())
        folder = run_folder(variant_dir("runs/study", cfg), "glyphs", arm.method, 0, arm.label_noise, arm.corrupt)
        names.add(published_stem(folder, cfg))
    assert len(names) == len(arms), "two arms would share a shipped history's name"


def test_the_family_is_declared_with_at_least_the_papers_claims():
    keys = [c.key for c in FAMILY]
    assert len(keys) == len(set(keys))
    for key in ("bf-main", "bf-longtail", "bf-shared-head", "bg-main", "bg-flipped", "bg-label-path", "bg-sparse",
                "bg-alpha", "bg-alpha-label-path"):
        assert key in keys
    assert all(c.expect in ("higher", "lower") for c in FAMILY)


def test_the_command_prints_the_family_from_the_shipped_histories(capsys):
    assert claims.main(["--seeds", "0", "1", "2", "3", "4"]) == 0
    out = capsys.readouterr().out
    assert "Holm p" in out and out.count("\n| ") >= len(FAMILY)
    assert claims.main(["--seeds", "0", "0"]) == 2
    assert "distinct" in capsys.readouterr().err
