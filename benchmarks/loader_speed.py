"""Images/s of the CUB training loader (decode + random resized crop 224 + flip + normalise)
with and without the decoded, resized image cache, on a synthetic archive whose images are
CUB-sized (300-500 px). Ratios measured in one run.

    .venv/bin/python benchmarks/loader_speed.py [--images 600] [--workers 0 2]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

from bgtutorial.data import CUB200, download_cub, fake_cub_url, make_fake_cub, train_transform  # noqa: E402


def images_per_s(ds, workers: int, batch: int = 32) -> float:
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
    n, t = 0, time.perf_counter()
    for x, _ in loader:
        n += x.shape[0]
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=600, help="images in the train split")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        per_class = max(1, a.images // 10)
        archive, md5 = make_fake_cub(Path(tmp) / "src", num_classes=20, per_class=per_class, image_sizes=(300, 500))
        download_cub(tmp, url=fake_cub_url(archive), md5=md5)
        plain = CUB200(tmp, "train", transform=train_transform(224))
        t = time.perf_counter()
        cached = CUB200(tmp, "train", transform=train_transform(224), cache_size=256)
        build = time.perf_counter() - t
        print(f"CUB training loader, {len(plain)} JPEGs of 300-500 px, batch 32, 224 px crops")
        print(f"machine: {machine()}")
        print(f"cache build (once): {build:.1f} s ({len(plain) / build:.0f} images/s)")
        print("| workers | no cache (images/s) | cache 256 px (images/s) | ratio |")
        print("|---|---|---|---|")
        for w in a.workers:
            images_per_s(plain, w)                 # warm the OS file cache for a fair comparison
            r0, r1 = images_per_s(plain, w), images_per_s(cached, w)
            print(f"| {w} | {r0:.0f} | {r1:.0f} | {r1 / r0:.2f} |")


if __name__ == "__main__":
    main()
