"""Images/s of the CUB training loader (decode + random resized crop 224 + flip + normalise)
with and without the decoded, resized image cache, on a synthetic archive whose images are
CUB-sized (300-500 px). One pass over the train split is one call; for each worker count the two
loaders are interleaved over several rounds (see ``_common.py``).

    .venv/bin/python benchmarks/loader_speed.py [--images 600] [--workers 0 2] [--rounds 5]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_args, header, interleaved, print_table, set_threads  # noqa: E402

from bgtutorial.data import CUB200, download_cub, fake_cub_url, make_fake_cub, train_transform  # noqa: E402


def one_pass(ds, workers: int, batch: int = 32):
    """A function that reads ``ds`` once through a shuffling DataLoader."""
    def run():
        for _ in DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers):
            pass
    return run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=600, help="images in the train split")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    add_args(p, rounds=5)
    a = p.parse_args()
    set_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        per_class = max(1, a.images // 10)
        archive, md5 = make_fake_cub(Path(tmp) / "src", num_classes=20, per_class=per_class, image_sizes=(300, 500))
        download_cub(tmp, url=fake_cub_url(archive), md5=md5)
        plain = CUB200(tmp, "train", transform=train_transform(224))
        t = time.perf_counter()
        cached = CUB200(tmp, "train", transform=train_transform(224), cache_size=256)
        build = time.perf_counter() - t
        n = len(plain)
        header(f"CUB training loader, {n} JPEGs of 300-500 px, batch 32, 224 px crops; one call = one pass",
               a.rounds, a.warmup)
        print(f"cache build (once, not interleaved): {build:.1f} s ({n / build:.0f} images/s)")
        for w in a.workers:
            print(f"\nworkers = {w}")
            t = interleaved({"no cache": one_pass(plain, w), "cache 256 px": one_pass(cached, w)}, a.rounds, a.warmup)
            print_table(t, "no cache", unit="s", label="loader",
                        extra={"images/s (median)": {name: f"{n / v.median:.0f}" for name, v in t.items()}})


if __name__ == "__main__":
    main()
