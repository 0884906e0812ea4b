"""The long-tailed training split (``imbalance``): Cao et al.'s exponential profile, checked against loops."""
from collections import Counter

import numpy as np
import pytest

from bgtutorial.checkpoint import config_dict, config_diff
from bgtutorial.data import MPerClassBatchSampler
from bgtutorial.config import Config, load_config
from bgtutorial.data.perturb import long_tail_counts, long_tailed
from bgtutorial.data.splits import build_splits


class Labels:
    """A stand-in dataset: only ``targets`` and indexing (returns the index and the label)."""

    def __init__(self, targets):
        self.targets = list(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return i, self.targets[i]


def profile_by_loop(n_max, n_classes, rho):
    """Cao et al.'s counts from the head (rank 0) to the tail (rank C-1), written as a plain loop."""
    out = []
    for r in range(n_classes):
        n = n_max * rho ** (-r / (n_classes - 1))
        out.append(max(2, int(round(n))))
    return out


@pytest.mark.parametrize("n_classes,n_max,rho", [(50, 40, 10.0), (102, 60, 100.0), (7, 20, 3.5), (2, 10, 5.0)])
def test_counts_follow_the_exponential_profile(n_classes, n_max, rho):
    counts = long_tail_counts([n_max] * n_classes, rho, seed=0)
    assert sorted(counts, reverse=True) == profile_by_loop(n_max, n_classes, rho)
    assert max(counts) == n_max and min(counts) == max(2, round(n_max / rho))


def test_ranks_are_a_seeded_permutation_not_the_label_order():
    a = long_tail_counts([40] * 50, 10.0, seed=0)
    assert a == long_tail_counts([40] * 50, 10.0, seed=0)                  # deterministic
    assert a != long_tail_counts([40] * 50, 10.0, seed=1)                  # the seed picks the head classes
    assert a != sorted(a, reverse=True)                                     # not simply class 0 = head


def test_a_class_never_gains_images_and_keeps_a_pair():
    have = [3, 60, 60, 5, 60, 60]
    counts = long_tail_counts(have, 50.0, seed=0)
    assert all(2 <= n <= h for n, h in zip(counts, have))


def test_subset_by_loop_and_properties():
    targets = [c for c in range(12) for _ in range(30)]
    ds = Labels(targets)
    sub = long_tailed(ds, 6.0, seed=3)
    kept = Counter(sub.targets)
    expect = long_tail_counts([30] * 12, 6.0, seed=3)
    for c in range(12):                                                     # each class keeps its profile count
        assert kept[c] == expect[c]
    assert len(set(sub.indices)) == len(sub.indices)                        # no image twice
    for i, j in enumerate(sub.indices):                                     # labels unchanged, items pass through
        assert sub[i] == (j, targets[j]) and sub.targets[i] == targets[j]
    again = long_tailed(ds, 6.0, seed=3)
    assert again.indices == sub.indices                                     # deterministic
    assert long_tailed(ds, 6.0, seed=4).indices != sub.indices


def test_rho_one_is_the_identity():
    ds = Labels([c for c in range(5) for _ in range(9)])
    assert long_tailed(ds, 1.0, seed=0) is ds
    assert long_tail_counts([9] * 5, 1.0, seed=0) == [9] * 5


@pytest.mark.parametrize("bad", [0.5, 0.0, -3.0])
def test_rho_below_one_is_refused(bad):
    with pytest.raises(ValueError, match=r"imbalance .*must be >= 1"):
        load_config("digits", imbalance=bad)
    with pytest.raises(ValueError, match="must be >= 1"):
        long_tail_counts([10] * 4, bad, seed=0)


def test_build_splits_cuts_only_the_training_classes():
    base = dict(views=1, val_classes=2, progress=False)
    train0, val0, test0 = build_splits(load_config("digits", **base))
    train, val, test = build_splits(load_config("digits", imbalance=8.0, **base))
    assert val.targets == val0.targets and test.targets == test0.targets   # validation and test whole
    have = Counter(train0.targets)
    classes = sorted(have)
    expect = long_tail_counts([have[c] for c in classes], 8.0, seed=0)
    got = Counter(train.targets)
    assert [got[c] for c in classes] == expect
    assert set(train.targets) == set(train0.targets)                       # every class kept
    # the same long-tailed split for every training seed (it follows data_seed)
    other, _, _ = build_splits(load_config("digits", imbalance=8.0, seed=5, **base))
    assert other.indices == train.indices


def test_label_noise_comes_after_the_cut():
    train, _, _ = build_splits(load_config("digits", views=1, imbalance=4.0, label_noise=0.2, progress=False))
    clean, _, _ = build_splits(load_config("digits", views=1, imbalance=4.0, progress=False))
    assert len(train) == len(clean)
    flipped = sum(a != b for a, b in zip(train.targets, clean.targets))
    assert flipped == round(0.2 * len(clean))


def test_sampler_takes_tail_classes_with_fewer_than_m_images():
    counts = long_tail_counts([40] * 30, 20.0, seed=0)                     # tail classes keep 2 images
    assert min(counts) < 4
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    s = MPerClassBatchSampler(labels, m=4, batch_size=40, num_batches=30, seed=0)
    seen = set()
    for batch in s:
        per_class = Counter(labels[i] for i in batch)
        assert len(per_class) == 10 and set(per_class.values()) == {4}
        seen |= set(per_class)
    small = {c for c, n in enumerate(counts) if n < 4}
    assert small & seen                                                    # drawn with replacement, not skipped


def test_runs_written_before_the_new_fields_still_load():
    cfg = load_config("digits")
    older = {k: v for k, v in config_dict(cfg).items() if k not in ("imbalance", "shared_head")}
    assert config_diff(older, cfg) == {}
    assert config_diff(older, load_config("digits", imbalance=10.0)) == {"imbalance": (1.0, 10.0)}
    names = {f for f in Config.__dataclass_fields__}
    assert Config(**{k: v for k, v in older.items() if k in names}).imbalance == 1.0   # as embed_run rebuilds it
