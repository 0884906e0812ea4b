import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def fake_archive(tmp_path_factory):
    """A small synthetic CUB_200_2011.tgz in the official layout: (path, md5)."""
    from bgtutorial.data import make_fake_cub

    return make_fake_cub(tmp_path_factory.mktemp("archive"), num_classes=20, per_class=4, seed=1)


@pytest.fixture(scope="session")
def fake_cub_root(tmp_path_factory, fake_archive):
    """A root with the synthetic archive downloaded (file://), verified and extracted."""
    from bgtutorial.data import download_cub, fake_cub_url

    root = tmp_path_factory.mktemp("cub")
    download_cub(root, url=fake_cub_url(fake_archive[0]), md5=fake_archive[1])
    return root


@pytest.fixture
def interrupt_pretraining(monkeypatch):
    """Ctrl-C during pretraining's second epoch (its second held-out evaluation), once epoch 1's
    checkpoint is written; call the returned function to let the next run go through."""
    from bgtutorial import pretrain as pt

    top1, calls = pt._top1, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return top1(*args, **kwargs)

    monkeypatch.setattr(pt, "_top1", interrupted)
    return lambda: monkeypatch.setattr(pt, "_top1", top1)
