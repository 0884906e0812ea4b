"""Corrupted training images (Config.corrupt): which images, how, and that nothing else changes."""
import pytest
import torch

from bgtutorial.checkpoint import config_diff, config_dict
from bgtutorial.config import load_config
from bgtutorial.data.perturb import OCCLUDE_SIDE, CorruptedImages, corrupt_image, corrupt_plan
from bgtutorial.data.splits import build_splits


def _item(ds, i, seed=123):
    """ds[i] under a fixed torch seed (the training transform draws a random crop)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ds[i]


@pytest.mark.parametrize("n,p", [(10, 0.0), (10, 0.25), (7, 0.5), (100, 0.33), (100, 1.0)])
def test_plan_share_is_p_to_rounding_and_seeded(n, p):
    plan = corrupt_plan(n, p, seed=3)
    assert len(plan) == round(p * n)
    assert all(0 <= i < n for i in plan) and set(plan.values()) <= {"occlude", "noise"}
    assert plan == corrupt_plan(n, p, seed=3)                      # deterministic
    if 0 < len(plan) < n:
        assert plan != corrupt_plan(n, p, seed=4)                  # another seed picks other images


def test_plan_draws_both_kinds_about_half_and_half():
    kinds = list(corrupt_plan(2000, 0.5, seed=0).values())
    assert 0.4 < kinds.count("occlude") / len(kinds) < 0.6


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_share_outside_unit_interval_raises(p):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corrupt_plan(10, p, seed=0)
    with pytest.raises(ValueError, match="corrupt must be in"):
        load_config("digits", corrupt=p)
    assert load_config("digits", corrupt=1.0).corrupt == 1.0


def test_occlusion_changes_one_square_patch_only():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 32, 24, generator=g)
    for seed in range(20):
        out = corrupt_image(x, "occlude", seed)
        changed = (out != x).any(0)                                # (H, W)
        rows = [r for r in range(32) if changed[r].any()]
        cols = [c for c in range(24) if changed[:, c].any()]
        # naive check: the changed pixels lie in one square whose side is a share of the shorter side
        top, left = rows[0], cols[0]
        side = max(rows[-1] - top + 1, cols[-1] - left + 1)
        assert OCCLUDE_SIDE[0] * 24 - 1 <= side <= OCCLUDE_SIDE[1] * 24 + 1
        for r in range(32):
            for c in range(24):
                if not (top <= r < top + side and left <= c < left + side):
                    assert torch.equal(out[:, r, c], x[:, r, c])
        assert torch.equal(out, corrupt_image(x, "occlude", seed))


def test_noise_replaces_everything_within_each_channels_range():
    x = torch.stack([torch.linspace(0.2, 0.5, 64), torch.linspace(-2, 1, 64), torch.full((64,), 0.7)]).reshape(3, 8, 8)
    out = corrupt_image(x, "noise", seed=5)
    assert out.shape == x.shape and not torch.equal(out[:2], x[:2])
    for ch in range(3):
        assert x[ch].min() <= out[ch].min() and out[ch].max() <= x[ch].max()
    assert (out[0] != x[0]).float().mean() > 0.95                 # every pixel redrawn
    assert torch.equal(out, corrupt_image(x, "noise", seed=5))
    with pytest.raises(ValueError, match="kind must be"):
        corrupt_image(x, "blur", seed=0)


def test_build_splits_corrupts_share_p_of_training_images_only():
    clean_train, _, clean_test = build_splits(load_config("digits", progress=False))
    cfg = load_config("digits", corrupt=0.3, progress=False)
    train, _, test = build_splits(cfg)
    assert isinstance(train, CorruptedImages) and train.targets == clean_train.targets
    n = len(train)
    idx = list(range(0, n, 7))                                     # a sample of indices, checked one by one
    differ = []
    for i in idx:
        xc, yc = _item(clean_train, i)
        xt, yt = _item(train, i)
        assert yc == yt
        differ.append(not torch.equal(xc, xt))
        if i in train.plan:                                        # loop reference: the same corruption by hand
            seed = (cfg.data_seed * 1_000_003 + i) % 2**62
            assert torch.equal(xt, corrupt_image(xc, train.plan[i], seed))
    assert differ == [i in train.plan for i in idx]
    assert len(train.plan) == round(0.3 * n)
    again, _, _ = build_splits(cfg)
    assert again.plan == train.plan                                # the same images every time (every epoch)
    assert torch.equal(_item(again, idx[1])[0], _item(train, idx[1])[0])
    other_seed, _, _ = build_splits(load_config("digits", corrupt=0.3, seed=1, progress=False))
    assert other_seed.plan == corrupt_plan(len(other_seed), 0.3, cfg.data_seed)   # seeded by data_seed, not seed
    for i in range(0, len(test), 97):                              # the test split stays clean
        assert torch.equal(test[i][0], clean_test[i][0]) and test[i][1] == clean_test[i][1]


def test_zero_share_is_the_identity():
    clean, _, _ = build_splits(load_config("digits", progress=False))
    zero, _, _ = build_splits(load_config("digits", corrupt=0.0, progress=False))
    assert not isinstance(zero, CorruptedImages) and type(zero) is type(clean)
    for i in (0, 11, len(zero) - 1):
        assert torch.equal(_item(zero, i)[0], _item(clean, i)[0])


def test_runs_written_before_the_field_still_match():
    cfg = load_config("digits", out="runs/x")
    saved = config_dict(cfg)
    del saved["corrupt"]                                           # a config.json from before the field
    assert config_diff(saved, cfg) == {}
    assert set(config_diff(saved, load_config("digits", out="runs/x", corrupt=0.2))) == {"corrupt"}
