"""A synthetic ``CUB_200_2011.tgz`` in the exact official layout, for tests and smoke runs.

The archive goes through the very same download / verify / extract / parse code as the
real one (use a ``file://`` URL and the MD5 this module returns). Images are small JPEGs
whose colours and shapes depend on the class, so a smoke training run has something to
learn; about one in seven is grayscale, as in the real archive.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .cub_archive import CUB_ARCHIVE, CUB_FOLDER, _writable_root

__all__ = ["make_fake_cub", "fake_cub_url"]

# The first few real class folder names, then synthetic ones in the same format.
_REAL_NAMES = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani",
               "Crested_Auklet", "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet",
               "Brewer_Blackbird", "Red_winged_Blackbird"]


def _class_name(i: int) -> str:
    name = _REAL_NAMES[i - 1] if i <= len(_REAL_NAMES) else f"Synthetic_Bird_{i:03d}"
    return f"{i:03d}.{name}"


def _draw(rng: np.random.Generator, cls: int, gray: bool, sizes: tuple[int, int] = (48, 96)) -> bytes:
    """One JPEG: a class-coloured shape on a noisy background, random size and position."""
    w, h = int(rng.integers(sizes[0], sizes[1] + 1)), int(rng.integers(sizes[0], sizes[1] + 1))
    hue = np.array([(cls * 53) % 256, (cls * 97) % 256, (cls * 151) % 256])
    background = rng.integers(0, 256, size=3)
    arr = np.clip(background + rng.normal(0, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    s = min(w, h)
    r = int(s * rng.uniform(0.25, 0.4))
    cx, cy = int(rng.integers(r, w - r + 1)), int(rng.integers(r, h - r + 1))
    box = [cx - r, cy - r, cx + r, cy + r]
    colour = tuple(int(c) for c in np.clip(hue + rng.normal(0, 15, 3), 0, 255))
    shape = cls % 3
    if shape == 0:
        draw.ellipse(box, fill=colour)
    elif shape == 1:
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    if gray:
        img = img.convert("L")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 1_300_000_000
    tar.addfile(info, io.BytesIO(data))


def make_fake_cub(root: str | Path, num_classes: int = 200, per_class: int = 3, seed: int = 0,
                  train_fraction: float = 0.5, image_sizes: tuple[int, int] = (48, 96)) -> tuple[Path, str]:
    """Write ``root/CUB_200_2011.tgz`` in the official layout; return ``(path, md5)``.

    The archive holds ``CUB_200_2011/`` with ``images/NNN.Class_Name/*.jpg`` and the five
    metadata files (``images.txt``, ``image_class_labels.txt``, ``classes.txt``,
    ``train_test_split.txt``, ``bounding_boxes.txt``) plus ``README``, and a top-level
    ``attributes.txt`` as the real one does. Byte-for-byte deterministic for a given ``seed`` (fixed gzip header). Image sides
    are drawn from ``image_sizes`` (real CUB images are about 500 px: use (300, 500) to time loaders).
    """
    if num_classes < 2 or per_class < 1:
        raise ValueError(f"need num_classes >= 2 and per_class >= 1, got {num_classes}, {per_class}")
    root = Path(root)
    _writable_root(root)                   # a clear error for a read-only folder
    rng = np.random.default_rng(seed)
    images, labels, classes, split, boxes = [], [], [], [], []
    path = root / CUB_ARCHIVE
    # gzip writes a file name and a time stamp into its header: fix both (empty name, mtime 0)
    # so that the same seed gives the same bytes, hence the same MD5, whenever it is built.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "attributes.txt", b"1 has_bill_shape::curved_(up_or_down)\n")
        image_id = 0
        for c in range(1, num_classes + 1):
            folder = _class_name(c)
            classes.append(f"{c} {folder}")
            for k in range(per_class):
                image_id += 1
                stem = folder.split(".", 1)[1]
                rel = f"{folder}/{stem}_{k + 1:04d}_{image_id}.jpg"
                gray = image_id % 7 == 3
                _add(tar, f"{CUB_FOLDER}/images/{rel}", _draw(rng, c, gray, image_sizes))
                images.append(f"{image_id} {rel}")
                labels.append(f"{image_id} {c}")
                split.append(f"{image_id} {int(rng.random() < train_fraction) if per_class > 1 else 1}")
                boxes.append(f"{image_id} 1.0 2.0 30.0 40.0")
        for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                            ("classes.txt", classes), ("train_test_split.txt", split),
                            ("bounding_boxes.txt", boxes)):
            _add(tar, f"{CUB_FOLDER}/{name}", ("\n".join(lines) + "\n").encode())
        _add(tar, f"{CUB_FOLDER}/README", b"Synthetic CUB-200-2011 built by bgtutorial for tests.\n")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return path, md5


def fake_cub_url(path: str | Path) -> str:
    """The ``file://`` URL of a local archive, for ``download_cub(root, url=...)``."""
    return Path(path).resolve().as_uri()
