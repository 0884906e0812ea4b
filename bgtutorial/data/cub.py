"""CUB-200-2011: download (official URL, MD5, safe extraction), parsing, the two protocols.

The retrieval protocol (zero-shot deep metric learning) trains on classes 1-100 and
tests on the unseen classes 101-200; the classification protocol uses the official
``train_test_split.txt``. Labels are 0-based and contiguous within each split.
See ``docs/method.md``, section "The task".
"""
from __future__ import annotations

import os
import shutil
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Sequence, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.utils import check_integrity, download_url, extract_archive
from tqdm.auto import tqdm

__all__ = [
    "CUB_URL", "CUB_MD5", "CUB_ARCHIVE", "CUB_FOLDER", "METADATA_FILES", "CUBDataError",
    "download_cub", "CUB200", "train_transform", "eval_transform", "IMAGENET_MEAN", "IMAGENET_STD",
]

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
CUB_ARCHIVE = "CUB_200_2011.tgz"
CUB_FOLDER = "CUB_200_2011"
#: the five metadata files of the official archive, with the number of fields per line
METADATA_FILES = {
    "images.txt": 2,               # image_id relative/path.jpg
    "image_class_labels.txt": 2,   # image_id class_id
    "classes.txt": 2,              # class_id 001.Black_footed_Albatross
    "train_test_split.txt": 2,     # image_id is_training_image
    "bounding_boxes.txt": 5,       # image_id x y width height
}
_DONE_MARKER = ".bgtutorial_extracted"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CUBDataError(RuntimeError):
    """A problem with the CUB-200-2011 files; the message names the file and the fix."""


def _check_members(archive: Path, dest: Path) -> None:
    """Read every member header; refuse any member that would land outside ``dest``.

    Also turns a truncated or corrupt archive into a clear :class:`CUBDataError`.
    """
    dest = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # iterating reads all headers: a truncated file fails here
                target = (dest / member.name).resolve()
                if not target.is_relative_to(dest):
                    raise CUBDataError(
                        f"{archive}: member {member.name!r} would be written outside {dest}; "
                        "the archive is not the official one. Delete it and download again.")
                if member.issym() or member.islnk():
                    link = (target.parent / member.linkname).resolve()
                    if not link.is_relative_to(dest):
                        raise CUBDataError(
                            f"{archive}: link {member.name!r} -> {member.linkname!r} points outside {dest}; "
                            "the archive is not the official one. Delete it and download again.")
                if member.isdev():
                    raise CUBDataError(f"{archive}: member {member.name!r} is a device file; refusing to extract.")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise CUBDataError(
            f"{archive} is truncated or corrupt ({type(err).__name__}: {err}). "
            f"Delete it and download again (download_cub(root) or CUB200(root, download=True)).") from err


def download_cub(root: str | Path, url: str = CUB_URL, md5: str | None = CUB_MD5) -> Path:
    """Fetch, verify and extract ``CUB_200_2011.tgz`` into ``root``; return ``root/CUB_200_2011``.

    Idempotent: an extracted copy is reused (ours, or one extracted by hand when no archive
    lies beside it), an archive already in ``root`` with the right MD5 is not downloaded again. The download shows a tqdm progress bar (torchvision's
    ``download_url``). ``md5=None`` skips the checksum (for archives you built yourself).
    Extraction refuses any member whose path would escape ``root``.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    base = root / CUB_FOLDER
    archive = root / CUB_ARCHIVE
    if (base / _DONE_MARKER).exists() or ((base / "images.txt").is_file() and not archive.exists()):
        return base
    if not archive.exists():
        try:
            if url.startswith("file://"):  # local mirror / tests: torchvision's downloader handles http(s) only
                shutil.copyfile(urllib.request.url2pathname(urllib.parse.urlparse(url).path), archive)
            else:
                download_url(url, str(root), filename=CUB_ARCHIVE, md5=None)
        except Exception as err:  # network errors, 404, ...
            archive.unlink(missing_ok=True)
            raise CUBDataError(
                f"could not download {url} to {archive} ({type(err).__name__}: {err}). Download it by hand "
                f"(see data/README.md) and place it at {archive}.") from err
    if not archive.exists():
        raise CUBDataError(f"archive {archive} is missing after download from {url}; place it there by hand.")
    if md5 is not None and not check_integrity(str(archive), md5):
        raise CUBDataError(
            f"checksum mismatch for {archive}: expected MD5 {md5}. The file is incomplete or not the "
            "official archive; delete it and download again.")
    _check_members(archive, root)
    extract_archive(str(archive), str(root))
    if not base.is_dir():
        raise CUBDataError(f"{archive} did not contain the folder {CUB_FOLDER}/; it is not the official archive.")
    (base / _DONE_MARKER).write_text("ok\n")
    return base


def _read_table(path: Path, fields: int) -> dict[int, list[str]]:
    """Parse one metadata file (``id field ...`` per line) into ``{id: [fields]}``."""
    if not path.is_file():
        raise CUBDataError(
            f"metadata file {path} is missing. The CUB-200-2011 folder is incomplete: delete "
            f"{path.parent} and extract the archive again (download_cub).")
    table: dict[int, list[str]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != fields or not parts[0].isdigit():
            raise CUBDataError(
                f"{path}, line {lineno}: expected {fields} fields starting with an integer id, got {line!r}. "
                "The file is malformed: extract the official archive again.")
        table[int(parts[0])] = parts[1:]
    if not table:
        raise CUBDataError(f"metadata file {path} is empty; extract the official archive again.")
    return table


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
        cache_size: when set (e.g. 256), images are decoded once, resized (shorter side to
            ``cache_size``, centre crop ``cache_size``²) and stored in a uint8 memory-mapped file
            next to the data; later epochs, runs and DataLoader workers read pixels from it
            instead of decoding JPEGs (see ``benchmarks/loader_speed.py``).

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
        for image_id in sorted(images):
            cls = int(labels[image_id][0])
            if keep(image_id, cls):
                self.samples.append((base / "images" / images[image_id][0], to_label[cls]))
        if protocol == "classification":  # keep labels contiguous even if a class has no image in this split
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
        except (UnidentifiedImageError, OSError) as err:
            raise CUBDataError(f"cannot read image {path} ({err}); the file is corrupt: extract again.") from err

    def _open_cache(self, size: int) -> np.ndarray:
        """Build (once, atomically) and memory-map the decoded, resized images: (N, size, size, 3) uint8."""
        path = self.base / f".cache-{self.protocol}-{self.split}-{size}px.u8"
        shape = (len(self.samples), size, size, 3)
        if not path.is_file() or path.stat().st_size != int(np.prod(shape)):
            resize = T.Compose([T.Resize(size), T.CenterCrop(size)])
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            out = np.memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for i in tqdm(range(len(self.samples)), desc=f"caching {self.split} images at {size}px", leave=False):
                out[i] = np.asarray(resize(self._decode(i)))
            out.flush()
            del out
            os.replace(tmp, path)
        return np.memmap(path, mode="r", dtype=np.uint8, shape=shape)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """The RGB PIL image of sample ``index`` (grayscale images are converted; from the cache when on)."""
        if self.cache is not None:
            return Image.fromarray(np.array(self.cache[index]))
        return self._decode(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load_image(index)), self.targets[index]

    def __repr__(self) -> str:
        return (f"CUB200(split={self.split!r}, protocol={self.protocol!r}, images={len(self)}, "
                f"classes={len(self.classes)}, root={str(self.root)!r})")


if __name__ == "__main__":  # python -m bgtutorial.data.cub --root data
    import argparse

    parser = argparse.ArgumentParser(description="Download, verify and extract CUB-200-2011.")
    parser.add_argument("--root", default="data")
    parser.add_argument("--url", default=CUB_URL)
    args = parser.parse_args()
    print(download_cub(args.root, url=args.url))
    for s in ("train", "test"):
        print(CUB200(args.root, split=s))
