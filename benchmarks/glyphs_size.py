"""Size of the embedded glyphs default and what it costs: classes, images, faces, look-alikes
merged, seconds to render it once against seconds to load it from its cache (a ratio measured
in one run), and how well raw pixels retrieve its unseen classes beside chance.

    .venv/bin/python benchmarks/glyphs_size.py [--per_class 60] [--smoke]
"""
import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

from bgtutorial.data import GlyphsRetrieval  # noqa: E402
from bgtutorial.data.glyph_classes import select_classes  # noqa: E402
from bgtutorial.data.glyphs import build_glyphs  # noqa: E402
from bgtutorial.metrics import retrieval_metrics  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--per_class", type=int, default=60)
    p.add_argument("--smoke", action="store_true", help="the smoke subset: 20 classes x 8 images")
    a = p.parse_args()
    size = dict(num_classes=20, per_class=8) if a.smoke else dict(num_classes=None, per_class=a.per_class)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        sel = select_classes(size["num_classes"])
        select_s = time.perf_counter() - t
        t = time.perf_counter()
        path = build_glyphs(tmp, progress=False, **size)                 # the selection is cached in-process now
        render_s = time.perf_counter() - t
        t = time.perf_counter()
        train = GlyphsRetrieval("train", root=tmp, progress=False, **size)
        test = GlyphsRetrieval("test", root=tmp, progress=False, **size)
        load_s = time.perf_counter() - t
        mib = path.stat().st_size / 2**20
    faces = [len(sel.faces[c]) for c in sel.classes]
    y = torch.tensor(test.targets)
    raw = retrieval_metrics(test.pixels().flatten(1), y, with_nmi=False)
    chance = sum(n * (n - 1) for n in Counter(test.targets).values()) / (len(y) * (len(y) - 1))
    print("| quantity | value |")
    print("|---|---|")
    print(f"| classes (train + unseen test) | {len(sel.classes)} ({len(train.classes)} + {len(test.classes)}) |")
    print(f"| images (train + test) | {len(train) + len(test):,} ({len(train):,} + {len(test):,}), "
          f"{size['per_class']} per class, {tuple(train.images.shape[1:])} uint8 |")
    print(f"| faces per class | {min(faces)}-{max(faces)} (median {statistics.median(faces):g}) |")
    print(f"| look-alikes merged / classes that lose a face | {len(sel.twins)} / {len(sel.pruned)} |")
    print(f"| choosing the classes (look-alike rule) | {select_s:.1f} s |")
    print(f"| rendering the images | {render_s:.1f} s |")
    print(f"| loading both splits from the cache | {load_s:.2f} s ({(select_s + render_s) / load_s:.0f}x faster "
          f"than rendering; cache file {mib:.1f} MiB) |")
    print(f"| raw-pixel R@1 / R@8 / MAP@R on the unseen classes | {raw['R@1']:.3f} / {raw['R@8']:.3f} / "
          f"{raw['MAP@R']:.4f} |")
    print(f"| chance R@1 | {chance:.4f} |")


if __name__ == "__main__":
    main()
