"""CUB-200-2011: parsing the extracted files, the two protocols, the transforms, the dataset.

The retrieval protocol (zero-shot deep metric learning) trains on classes 1-100 and
tests on the unseen classes 101-200; the classification protocol uses the official
``train_test_split.txt``. Labels are 0-based and contiguous within each split (over the
classes that have images in it). The retrieval split is the one of Oh Song et al. (CVPR 2016),
the standard deep-metric-learning protocol. See ``docs/method.md``, section "The task".

Getting the archive (download, MD5, safe extraction) is :mod:`bgtutorial.data.cub_archive`. Here,
the metadata files are parsed strictly (each line, each id, each path: a malformed file says
which line and what to do), ``images.txt`` may only name files under ``CUB_200_2011/images/``,
and a decoded-once image cache can stand in for the JPEGs (:class:`CUB200`, ``cache_size``).

``python -m bgtutorial.data.cub --root data [--url URL] [--md5 MD5|none]``
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from einops import rearrange
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T
from tqdm.auto import tqdm

from ..utils import CLI_ERRORS, error_line
from .cub_archive import CUB_ARCHIVE, CUB_FOLDER, CUB_MD5, CUB_URL, METADATA_FILES, CUBDataError, download_cub

__all__ = ["CUB200", "train_transform", "eval_transform", "IMAGENET_MEAN", "IMAGENET_STD"]

#: the metadata files whose every field is an integer (the others hold a path, a name or coordinates)
_INTEGER_FILES = ("image_class_labels.txt", "train_test_split.txt")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _read_table(path: Path, fields: int) -> dict[int, list[str]]:
    """Parse one metadata file (``id field ...`` per line, ids decimal and unique) into ``{id: [fields]}``;
    in the files of :data:`_INTEGER_FILES` every field is a decimal integer."""
    if not path.is_file():
        raise CUBDataError(
            f"metadata file {path} is missing. The CUB-200-2011 folder is incomplete: move "
            f"{path.parent} away and extract the archive again (download_cub).")
    fix = "The file is malformed: extract the official archive again."
    table: dict[int, list[str]] = {}
    where: dict[int, int] = {}
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CUBDataError(f"{path}, line {lineno}: bytes that are not UTF-8 text ({raw[:40]!r}). {fix}") from None
        if not line.strip():
            continue
        parts = line.split()
        numbers = parts if path.name in _INTEGER_FILES else parts[:1]
        if len(parts) != fields or not all(p.isascii() and p.isdigit() for p in numbers):
            kind = "integers" if path.name in _INTEGER_FILES else "fields starting with an integer id"
            raise CUBDataError(
                f"{path}, line {lineno}: expected {fields} {kind}, got {line!r}. {fix}")
        image_id = int(parts[0])
        if image_id in table:
            raise CUBDataError(f"{path}, line {lineno}: id {image_id} again (first on line {where[image_id]}); "
                               f"each id must appear once. {fix}")
        table[image_id], where[image_id] = parts[1:], lineno
    if not table:
        raise CUBDataError(f"metadata file {path} is empty; extract the official archive again.")
    return table


def _image_path(base: Path, name: str, image_id: int) -> Path:
    """``base/images/name`` for an ``images.txt`` entry, refused when ``name`` leaves ``images/``
    (an absolute path, ``..``, a drive or a backslash)."""
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or name[1:2] == ":" or any(p in ("", ".", "..") for p in parts):
        raise CUBDataError(f"{base / 'images.txt'}, image {image_id}: the path {name!r} leaves "
                           f"{base / 'images'}/ (each must be a relative path inside it, like "
                           "001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg); "
                           "extract the official archive again.")
    return base / "images" / name


def train_transform(size: int = 224, scale: tuple[float, float] = (0.08, 1.0), interpolation: str = "bilinear",
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Callable:
    """Training transform: random resized crop (area share ``scale``) + horizontal flip + normalisation.

    The defaults are torchvision's and Proxy-Anchor's (dataset/utils.py L72-77); Hyp-ViT uses
    ``scale=(0.2, 1)``, bicubic, and the ViT's mean/std of 0.5 (train.py L87-100).
    """
    return T.Compose([T.RandomResizedCrop(size, scale=tuple(scale), interpolation=_interpolation(interpolation)),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(size: int = 224, resize: int | None = None, interpolation: str = "bilinear",
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Callable:
    """Test transform: resize the shorter side to ``resize`` (default size·8/7: 256 for 224) + centre crop + normalisation."""
    resize = resize or round(size * 256 / 224)
    return T.Compose([T.Resize(resize, interpolation=_interpolation(interpolation)), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(mean, std)])


def _interpolation(name: str) -> T.InterpolationMode:
    modes = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    if name not in modes:
        raise ValueError(f"unknown interpolation {name!r}; choose one of {', '.join(modes)}")
    return modes[name]


class CUB200(Dataset):
    """CUB-200-2011 as ``(image_tensor, label)`` pairs.

    Args:
        root: folder holding ``CUB_200_2011/`` (or where to download it).
        split: ``"train"`` or ``"test"``.
        protocol: ``"retrieval"`` (first half of the classes to train, the unseen second
            half to test: 1-100 / 101-200) or ``"classification"`` (``train_test_split.txt``).
        transform: applied to the RGB PIL image; ``None`` gives the raw image as a float
            tensor (3, H, W) in [0, 1].
        download: fetch and extract the archive when it is not there yet.
        cache_size: when set (e.g. 256), images are decoded once, resized with their aspect ratio
            kept (shorter side to ``cache_size``, as ``T.Resize(cache_size)``; nothing is cropped, so
            a training crop can still come from any part of the image) and stored in a uint8
            memory-mapped file next to the data; later epochs, runs and DataLoader workers read
            pixels from it instead of decoding JPEGs (see ``benchmarks/loader_speed.py``). What
            changes against decoding each time: every transform starts from the resized copy, so a
            random crop smaller than the copy is enlarged from fewer pixels than the JPEG holds.

    Attributes: ``samples`` (list of (path, label)), ``targets`` (list of int),
    ``classes`` (class folder names, indexed by label), ``class_ids`` (official 1-based ids).
    """

    def __init__(self, root: str | Path, split: Literal["train", "test"] = "train",
                 protocol: Literal["retrieval", "classification"] = "retrieval",
                 transform: Callable | None = None, download: bool = False,
                 url: str = CUB_URL, md5: str | None = CUB_MD5, cache_size: int | None = None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if protocol not in ("retrieval", "classification"):
            raise ValueError(f"protocol must be 'retrieval' or 'classification', got {protocol!r}")
        self.root, self.split, self.protocol = Path(root).expanduser(), split, protocol
        self.transform = transform if transform is not None else T.ToTensor()
        base = self.root / CUB_FOLDER
        if download:
            base = download_cub(self.root, url=url, md5=md5)
        elif not base.is_dir():
            hint = (f"the archive {self.root / CUB_ARCHIVE} is there: pass download=True to verify and extract it"
                    if (self.root / CUB_ARCHIVE).exists() else
                    "pass download=True (or run `python -m bgtutorial.data.cub --root ROOT`), or see data/README.md")
            raise CUBDataError(f"CUB-200-2011 not found: the folder {base} does not exist; {hint}.")
        self.base = base
        tables = {name: _read_table(base / name, n) for name, n in METADATA_FILES.items()}
        images, labels = tables["images.txt"], tables["image_class_labels.txt"]
        split_flags, classes = tables["train_test_split.txt"], tables["classes.txt"]
        for name in ("image_class_labels.txt", "train_test_split.txt"):
            if tables[name].keys() != images.keys():
                raise CUBDataError(
                    f"{base / name} does not list the same image ids as {base / 'images.txt'}; "
                    "the metadata is inconsistent: extract the official archive again.")
        class_ids = sorted(classes)
        unknown = {int(v[0]) for v in labels.values()} - set(class_ids)
        if unknown:
            raise CUBDataError(f"{base / 'image_class_labels.txt'} uses class ids {sorted(unknown)[:5]} "
                               f"missing from {base / 'classes.txt'}; extract the official archive again.")
        if protocol == "retrieval":
            half = len(class_ids) // 2
            keep_classes = class_ids[:half] if split == "train" else class_ids[half:]
            keep = lambda i, c: c in keep_set  # noqa: E731
        else:
            keep_classes = class_ids
            flag = "1" if split == "train" else "0"
            keep = lambda i, c: split_flags[i][0] == flag  # noqa: E731
        keep_set = set(keep_classes)
        to_label = {c: n for n, c in enumerate(keep_classes)}
        self.class_ids = keep_classes
        self.classes = [classes[c][0] for c in keep_classes]
        self.samples: list[tuple[Path, int]] = []
        paths = {image_id: _image_path(base, images[image_id][0], image_id) for image_id in images}
        for image_id in sorted(images):
            cls = int(labels[image_id][0])
            if keep(image_id, cls):
                self.samples.append((paths[image_id], to_label[cls]))
        if not self.samples:
            raise CUBDataError(f"{base / 'images.txt'} lists no image of the {split} split ({protocol} protocol); "
                               "the metadata is incomplete: extract the official archive again.")
        # labels stay contiguous (0..C-1) even when a class listed in classes.txt has no image in this split,
        # so the loss gets no proxy for a class it never sees
        present = sorted({lab for _, lab in self.samples})
        if len(present) != len(keep_classes):
            remap = {old: new for new, old in enumerate(present)}
            self.samples = [(p, remap[lab]) for p, lab in self.samples]
            self.class_ids = [keep_classes[o] for o in present]
            self.classes = [classes[c][0] for c in self.class_ids]
        missing = [p for p, _ in self.samples if not p.is_file()]
        if missing:
            raise CUBDataError(
                f"{len(missing)} image(s) listed in {base / 'images.txt'} are absent, e.g. {missing[0]}. "
                "The extraction is incomplete: delete the folder and extract the archive again.")
        self.targets = [lab for _, lab in self.samples]
        self.cache = self._open_cache(cache_size) if cache_size else None

    def _decode(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except Image.DecompressionBombError as err:     # a header claiming more pixels than PIL's limit
            raise CUBDataError(f"image {path} is refused as a decompression bomb ({str(err).rstrip('.')}); CUB's "
                               "photographs are at most 500 px wide: replace it with the official file (extract the "
                               "archive again).") from None
        except (UnidentifiedImageError, OSError) as err:
            raise CUBDataError(f"cannot read image {path} ({err}); the file is corrupt: extract again.") from err

    def _cached_size(self, index: int, size: int) -> tuple[int, int]:
        """(height, width) of sample ``index`` once its shorter side is ``size`` (``T.Resize(size)``'s rule),
        read from the file's header, without decoding the pixels."""
        path = self.samples[index][0]
        try:
            with Image.open(path) as img:
                w, h = img.size
        except (UnidentifiedImageError, OSError) as err:
            raise CUBDataError(f"cannot read image {path} ({err}); the file is corrupt: extract again.") from err
        short, long = min(w, h), max(w, h)
        long = int(size * long / short)
        return (size, long) if h <= w else (long, size)

    def _open_cache(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Build (once, atomically) and memory-map the decoded, resized images, aspect kept: a flat uint8
        file of every image's (h, w, 3) pixels one after the other, and an index (N, 3) of
        (offset, h, w) per image beside it (``.idx.npy``)."""
        path = self.base / f".cache-{self.protocol}-{self.split}-{size}px-aspect.u8"
        index_path = path.with_name(path.name + ".idx.npy")
        index = np.load(index_path) if index_path.is_file() else None
        if (index is None or index.shape != (len(self.samples), 3) or not path.is_file()
                or path.stat().st_size != int(index[-1, 0] + index[-1, 1] * index[-1, 2] * 3)):
            index = self._build_cache(path, index_path, size)
        return np.memmap(path, mode="r", dtype=np.uint8), index

    def _build_cache(self, path: Path, index_path: Path, size: int) -> np.ndarray:
        """Write the cache of :meth:`_open_cache` through temporary files; return its index (N, 3)."""
        shapes = np.array([self._cached_size(i, size) for i in range(len(self.samples))], dtype=np.int64)  # (N, 2)
        nbytes = shapes[:, 0] * shapes[:, 1] * 3
        index = np.concatenate([np.cumsum(nbytes)[:, None] - nbytes[:, None], shapes], axis=1)     # (N, 3)
        resize = T.Resize(size)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp_index = index_path.with_name(f"{path.name}.tmp{os.getpid()}.idx.npy")
        try:
            try:
                out = np.memmap(tmp, mode="w+", dtype=np.uint8, shape=(int(nbytes.sum()),))
                np.save(tmp_index, index)
            except OSError as err:
                raise CUBDataError(
                    f"cannot write the image cache {tmp} ({err.strerror or err}); make {self.base} writable "
                    "or set cache_size=0 (decode the JPEGs every epoch)") from err
            for i in tqdm(range(len(self.samples)), desc=f"caching {self.split} images at {size}px", leave=False):
                pixels = np.asarray(resize(self._decode(i)))                            # (h, w, 3)
                if pixels.shape[:2] != tuple(shapes[i]):
                    raise CUBDataError(f"{self.samples[i][0]} decodes to another size than its header says; "
                                       "the file is corrupt: extract again.")
                out[index[i, 0]:index[i, 0] + nbytes[i]] = rearrange(pixels, "h w c -> (h w c)")
            out.flush()
            del out
            os.replace(tmp, path)
            os.replace(tmp_index, index_path)
        finally:                        # a failed build (bad image, full disk, Ctrl-C) leaves no temporary file
            tmp.unlink(missing_ok=True)
            tmp_index.unlink(missing_ok=True)
        return index

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """The RGB PIL image of sample ``index`` (grayscale images are converted; from the cache when on)."""
        if self.cache is not None:
            pixels, table = self.cache
            offset, h, w = (int(v) for v in table[index])
            return Image.fromarray(rearrange(np.array(pixels[offset:offset + h * w * 3]), "(h w c) -> h w c", h=h, w=w))
        return self._decode(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load_image(index)), self.targets[index]

    def __repr__(self) -> str:
        return (f"CUB200(split={self.split!r}, protocol={self.protocol!r}, images={len(self)}, "
                f"classes={len(self.classes)}, root={str(self.root)!r})")


def main(argv: list[str] | None = None) -> int:
    """``python -m bgtutorial.data.cub --root data [--url URL] [--md5 MD5|none]``: download, verify, extract."""
    parser = argparse.ArgumentParser(prog="python -m bgtutorial.data.cub", allow_abbrev=False,
                                     description="Download, verify and extract CUB-200-2011.")
    parser.add_argument("--root", default="data", help="data folder (default: data)")
    parser.add_argument("--url", default=CUB_URL, help="where to fetch the archive (http(s):// or file://)")
    parser.add_argument("--md5", default=CUB_MD5,
                        help="expected MD5 of the archive (default: the official one; 'none' skips the check)")
    args = parser.parse_args(argv)
    md5 = None if args.md5.lower() == "none" else args.md5.lower()
    try:
        print(download_cub(args.root, url=args.url, md5=md5))
        for s in ("train", "test"):
            print(CUB200(args.root, split=s))
    except CLI_ERRORS as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-done was kept (a partial download or extraction is removed); run the "
              "same command again", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
