"""Memory sized from the config before anything is allocated, and batches built when drawn (issue 32, item 6)."""
import subprocess
import sys
import time

import numpy as np
import pytest

from bgtutorial.cli import main
from bgtutorial.config import load_config
from bgtutorial.data import MPerClassBatchSampler
from bgtutorial.data.sampler import RandomBatchSampler
from bgtutorial.resources import GLYPH_CLASSES, MAX_BYTES, check_allocation, check_resources

# the probes of issue 32: each failed minutes later with a MemoryError traceback
TOO_BIG = [
    (["--preset", "glyphs", "--glyph_per_class", "1000", "--image_size", "128"],
     r"the glyph images \(204 classes x 1,000 images x 3 x 128 x 128 bytes, both splits\) would take 9\.3 GiB",
     "--glyph_per_class"),
    (["--preset", "glyphs", "--eval_batch_size", "100000"],
     r"one evaluation batch \(100,000 images x 32 x 32 px x 67 float32 .*\) would take 25\.6 GiB", "--eval_batch_size"),
    (["--preset", "digits", "--views", "5000"],
     r"the digit images \(1,797 digits x 5,000 views x 3 x 32 x 32 float32\) would take 102\.8 GiB", "--views"),
    (["--preset", "smoke", "--image_size", "1024"],
     r"one evaluation batch \(256 images x 1024 x 1024 px .*\) would take 67\.0 GiB", "--image_size"),
]


@pytest.mark.parametrize("argv,message,option", TOO_BIG)
def test_configs_over_the_limit_exit_2_with_the_figure(argv, message, option, capsys, tmp_path):
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert pytest.approx(8.0) == MAX_BYTES / 2**30 and "over the 8.0 GiB limit" in err
    import re
    assert re.search(message, err), err
    assert option in err.split("over the")[1]                       # says what to pass instead
    assert not out.exists()                                         # refused before anything was written


def test_the_train_module_exits_2_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "bgtutorial.train", "--preset", "digits", "--views", "5000",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "102.8 GiB" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_the_presets_fit_and_the_limit_can_be_raised(monkeypatch):
    for preset in ("glyphs", "glyphs-scratch", "digits", "smoke", "cub-resnet50", "cub-vits"):
        check_resources(load_config(preset))                        # the shipped presets are far below
    cfg = load_config("glyphs")
    big = dict(glyph_per_class=1000, image_size=128)
    with pytest.raises(ValueError, match="9.3 GiB, over the 8.0 GiB"):
        load_config("glyphs", **big)
    monkeypatch.setenv("BGT_MAX_GIB", "16")
    assert load_config("glyphs", **big).glyph_per_class == 1000
    monkeypatch.setenv("BGT_MAX_GIB", "lots")
    with pytest.raises(ValueError, match="BGT_MAX_GIB='lots' must be a number of GiB"):
        check_resources(cfg)


def test_check_allocation_for_other_commands():
    """The function another command (the glyph backbone's pretraining) calls with its own figure."""
    check_allocation("the pretraining images", 2**30, "pass a smaller --per_class")
    n = 1250 * 1_000_000 * 3 * 32 * 32                              # 1,250 characters x 1,000,000 images
    with pytest.raises(ValueError, match=r"^the pretraining images would take 3,576\.3 GiB, over the 8\.0 GiB limit "
                                         r".*: pass a smaller --per_class$"):
        check_allocation("the pretraining images", n, "pass a smaller --per_class")


def test_glyph_classes_is_the_count_the_look_alike_rule_keeps():
    from bgtutorial.data.glyph_classes import select_classes

    assert len(select_classes().classes) == GLYPH_CLASSES


# ---------------------------------------------------------------- batches built when drawn, the same as before
def eager_m_per_class(labels, m, batch_size, num_batches, seed, epoch):
    """The sampler's former construction, every batch of the epoch built up front."""
    labels = np.asarray(labels)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    rng = np.random.default_rng([seed, epoch])
    pools = [rng.permutation(ix) for ix in by_class]
    cursor = [0] * len(pools)
    batches = []
    for _ in range(num_batches):
        chosen = rng.choice(len(pools), batch_size // m, replace=False)
        batch = []
        for c in chosen:
            pool = pools[c]
            if len(pool) < m:
                batch.extend(rng.choice(pool, m, replace=True))
                continue
            if cursor[c] + m > len(pool):
                pools[c], cursor[c] = rng.permutation(pool), 0
                pool = pools[c]
            batch.extend(pool[cursor[c]:cursor[c] + m])
            cursor[c] += m
        batches.append([int(i) for i in batch])
    return batches


def eager_random(num_samples, batch_size, num_batches, seed, epoch):
    rng = np.random.default_rng([seed, epoch, 1])
    per_pass = num_samples // batch_size
    batches = []
    while len(batches) < num_batches:
        order = rng.permutation(num_samples)
        batches += [order[i * batch_size:(i + 1) * batch_size].tolist() for i in range(per_pass)]
    return batches[:num_batches]


@pytest.mark.parametrize("seed,epoch,start", [(0, 0, 0), (3, 2, 5), (7, 1, 39)])
def test_lazy_batches_are_the_eager_ones(seed, epoch, start):
    labels = [c for c in range(9) for _ in range(3 + c)] + [9]        # classes of 3-11 samples, one of 1
    s = MPerClassBatchSampler(labels, m=4, batch_size=12, num_batches=40, seed=seed)
    s.set_epoch(epoch, start)
    assert list(s) == eager_m_per_class(labels, 4, 12, 40, seed, epoch)[start:]
    r = RandomBatchSampler(50, 8, num_batches=23, seed=seed)           # 6 batches per pass: four passes
    r.set_epoch(epoch, start % 23)
    assert list(r) == eager_random(50, 8, 23, seed, epoch)[start % 23:]
    halves = [list(MPerClassBatchSampler(labels, m=4, batch_size=12, num_batches=40, seed=seed, rank=k,
                                         world_size=2)) for k in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == eager_m_per_class(labels, 4, 12, 40, 0 + seed, 0)


def test_a_huge_epoch_costs_no_memory_up_front():
    """Issue 32: --steps_per_epoch 1e8 built every batch before the first step and failed after 110 s."""
    labels = [c for c in range(30) for _ in range(20)]
    s = MPerClassBatchSampler(labels, m=4, batch_size=120, num_batches=10**8, seed=0)
    r = RandomBatchSampler(600, 120, num_batches=10**8, seed=0)
    t = time.perf_counter()
    first, first_r = next(iter(s)), next(iter(r))
    assert time.perf_counter() - t < 5.0
    assert len(s) == len(r) == 10**8 and len(first) == len(first_r) == 120
    assert first == eager_m_per_class(labels, 4, 120, 1, 0, 0)[0]
    assert load_config("glyphs", steps_per_epoch=10**8).steps_per_epoch == 10**8   # a long run, not a refused one


def test_a_run_with_a_huge_epoch_draws_its_first_batch_at_once():
    """The training path itself: the run's sampler (train._batch_sampler) for 10**8 steps per epoch."""
    from bgtutorial.data.sampler import SeededBatches
    from bgtutorial.data.splits import build_splits
    from bgtutorial.train import _batch_sampler

    cfg = load_config("digits", steps_per_epoch=10**8)
    train_ds = build_splits(cfg)[0]
    t = time.perf_counter()
    sampler = _batch_sampler(cfg, train_ds, 0, 1)
    first = next(iter(SeededBatches(sampler, cfg.seed)))
    assert time.perf_counter() - t < 5.0 and sampler.num_batches == 10**8 and len(first) == cfg.batch_size


def test_pretrain_refuses_a_corpus_over_the_limit_before_rendering(tmp_path):
    """``--per_class 1000000``: the corpus would take terabytes; refused with the figure, nothing rendered."""
    from bgtutorial.pretrain import check_arguments

    args = dict(out=tmp_path / "out", work=tmp_path / "work", epochs=1, heldout=8, batch_size=128, lr=2e-3,
                weight_decay=5e-4, label_smoothing=0.0, seed=0, data_root=tmp_path / "data")
    with pytest.raises(ValueError, match=r"the corpus images \(641 classes x 1,000,000 renderings x 3 x 32 x 32 bytes\) "
                                         r"would take 1,833.9 GiB.*--per_class 40"):
        check_arguments(per_class=1_000_000, classes=641, **args)
    check_arguments(per_class=40, classes=641, **args)                  # the default fits
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
