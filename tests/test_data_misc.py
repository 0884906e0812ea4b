"""The embedded digits default and the m-per-class sampler."""
from collections import Counter

import pytest
import torch

from bgtutorial.data import DigitsRetrieval, MPerClassBatchSampler
from bgtutorial.metrics import recall_at_k


@pytest.fixture(scope="module")
def digits_test():
    return DigitsRetrieval("test", views=2, seed=0)


def test_digits_protocol_and_shapes(digits_test):
    train = DigitsRetrieval("train", views=2, seed=0)
    assert train.images.shape[1:] == (3, 32, 32) == digits_test.images.shape[1:]
    assert sorted(set(train.targets)) == list(range(5)) == sorted(set(digits_test.targets))
    assert train.classes == [f"digit {d}" for d in range(5)]
    assert digits_test.classes == [f"digit {d}" for d in range(5, 10)]
    assert 0 <= float(digits_test.images.min()) and float(digits_test.images.max()) <= 1
    x, y = digits_test[3]
    assert x.shape == (3, 32, 32) and isinstance(y, int)


def test_digits_deterministic_from_seed():
    a = DigitsRetrieval("train", views=1, seed=5, limit=20)
    b = DigitsRetrieval("train", views=1, seed=5, limit=20)
    c = DigitsRetrieval("train", views=1, seed=6, limit=20)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_digits_need_a_learned_embedding(digits_test):
    """Raw pixels must stay near chance (0.2) on the unseen digits."""
    x = digits_test.images.flatten(1)
    r1 = recall_at_k(x, torch.tensor(digits_test.targets), ks=(1,))[1]
    assert r1 < 0.45


def test_digits_views_differ(digits_test):
    # the two views of one original are different renderings
    assert not torch.allclose(digits_test.images[0], digits_test.images[1])


def test_sampler_m_per_class():
    labels = [c for c in range(10) for _ in range(7)]
    s = MPerClassBatchSampler(labels, m=3, batch_size=12, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == len(labels) // 12
    for b in batches:
        counts = Counter(labels[i] for i in b)
        assert len(b) == 12 and len(counts) == 4 and set(counts.values()) == {3}


def test_sampler_replayable_and_resumable():
    labels = [c for c in range(8) for _ in range(5)]
    s = MPerClassBatchSampler(labels, m=2, batch_size=8, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=2)
    assert list(s) == full[2:]
    s.set_epoch(3)
    assert list(s) != full


def test_sampler_small_class_with_replacement():
    labels = [0] * 1 + [1] * 6 + [2] * 6
    s = MPerClassBatchSampler(labels, m=3, batch_size=9, num_batches=5)
    for b in s:
        assert Counter(labels[i] for i in b) == {0: 3, 1: 3, 2: 3}


def test_sampler_ranks_partition_global_batch():
    labels = [c for c in range(6) for _ in range(4)]
    full = list(MPerClassBatchSampler(labels, m=2, batch_size=8, seed=0))
    r0 = list(MPerClassBatchSampler(labels, m=2, batch_size=8, seed=0, rank=0, world_size=2))
    r1 = list(MPerClassBatchSampler(labels, m=2, batch_size=8, seed=0, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == full


def test_sampler_errors():
    labels = [c for c in range(3) for _ in range(4)]
    with pytest.raises(ValueError, match="not a multiple of m"):
        MPerClassBatchSampler(labels, m=4, batch_size=10)
    with pytest.raises(ValueError, match="needs 4 distinct classes but the data has only 3"):
        MPerClassBatchSampler(labels, m=2, batch_size=8)
