"""The embedded default dataset: rendered glyphs in CUB-200's protocol, with nothing to download.

CUB-200-2011 has 200 bird species with about 60 photographs each; a network trains on 100
species and retrieves among the 100 others. This dataset has the same shape and is built from
what an installed matplotlib already ships: its TrueType fonts. In the spirit of Omniglot (Lake
et al., 2015), a class is a *character*: Latin, Greek, Cyrillic, Armenian, Georgian and Hebrew
letters and the digits. Its images are renderings of that character in every face that has it
(DejaVu Sans, Serif and Mono and STIX General, each in regular, bold, italic and bold italic,
and six Computer Modern faces where they have the character), each under nuisances that make
raw pixels a poor retriever: an affine jitter, the stroke weight, ink and background colours,
textured backgrounds, clutter strokes, blur and noise.

Which characters become classes, in which faces, and the train/test split of the classes
(coverage, look-alikes, protocol) is :mod:`bgtutorial.data.glyph_classes`. This module draws them:

* **Rendering and cache** (:func:`render_class`, :func:`build_glyphs`): every image is a pure
  function of (character, seed); the whole set is rendered once (seconds, progress bar) into
  ``<root>/glyphs-<hash>/``, written atomically, where the hash covers the source of this module
  and of :mod:`~bgtutorial.data.glyph_classes` as imported, the parameters, matplotlib's version
  and the font files: changing the rendering code or the choice of classes renders again.
* **The dataset** (:class:`GlyphsRetrieval`): one split of the rendered set, with its class names.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import shutil
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..utils import UserError, bars_disabled
from .glyph_classes import FACES, FILL, _crop, _fit, font_dir, script_of, select_classes, split_classes

__all__ = ["GlyphsRetrieval", "render_class", "build_glyphs"]

MASTER = 64                  # side of the master mask the images are sampled from


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread: thousands of small tensor ops go faster than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ rendering
def _masters(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """Master masks of one character, (F, 4, MASTER, MASTER): stroke weights thin, as drawn, bold, bolder."""
    m = rearrange(torch.from_numpy(np.stack([_fit(c, MASTER) for c in crops])), "f h w -> f 1 h w")
    thin = -F.max_pool2d(-m, 3, stride=1, padding=1)                  # erosion by one master pixel
    keeps = thin.sum((1, 2, 3)) >= 0.5 * m.sum((1, 2, 3))             # thin strokes may vanish: then as drawn
    thin = torch.where(rearrange(keeps, "f -> f 1 1 1"), thin, m)
    bold = F.max_pool2d(m, 3, stride=1, padding=1)
    bolder = F.max_pool2d(m, 5, stride=1, padding=2)
    return torch.cat([thin, m, bold, bolder], dim=1)


def _segments(n: int, canvas: int, g: torch.Generator, max_strokes: int = 4) -> torch.Tensor:
    """Clutter: up to ``max_strokes`` random line segments per image, (N, S, H, W) soft masks."""
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    ends = u(n, max_strokes, 2, 2) * 1.2 - 0.1                        # endpoints, canvas units (may leave it)
    width = 0.35 + 0.5 * u(n, max_strokes)                            # half-width in px
    alive = u(n, max_strokes) < 0.6
    alive[:, 0] = True                                                # at least one stroke
    ys, xs = torch.meshgrid(torch.arange(canvas) + 0.5, torch.arange(canvas) + 0.5, indexing="ij")
    p = torch.stack([xs, ys], -1)                                     # (H, W, 2) pixel centres
    a, b = ends[:, :, 0] * canvas, ends[:, :, 1] * canvas             # (N, S, 2)
    ab = rearrange(b - a, "n s c -> n s 1 1 c")
    ap = rearrange(p, "h w c -> 1 1 h w c") - rearrange(a, "n s c -> n s 1 1 c")
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-6)).clamp(0, 1)
    dist = (ap - t[..., None] * ab).norm(dim=-1)                      # (N, S, H, W) distance to the segment
    soft = (rearrange(width, "n s -> n s 1 1") - dist + 0.5).clamp(0, 1)
    return soft * rearrange(alive.float(), "n s -> n s 1 1")


def _texture(n: int, canvas: int, g: torch.Generator) -> torch.Tensor:
    """A zero-mean colour texture, (N, 3, H, W): low-frequency blotches, a grating and a gradient."""
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    blotches = F.interpolate(torch.randn(n, 3, 4, 4, generator=g), size=(canvas, canvas), mode="bicubic",
                             align_corners=False) * rearrange(0.04 + 0.10 * u(n), "n -> n 1 1 1")
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, canvas), torch.linspace(-1, 1, canvas), indexing="ij")
    angle, freq, phase = u(n) * math.pi, 1.5 + 4.5 * u(n), u(n) * 2 * math.pi
    along = rearrange(torch.cos(angle), "n -> n 1 1") * xs + rearrange(torch.sin(angle), "n -> n 1 1") * ys
    wave = torch.cos(math.pi * rearrange(freq, "n -> n 1 1") * along + rearrange(phase, "n -> n 1 1"))
    grating = rearrange(wave, "n h w -> n 1 h w") * rearrange((u(n, 3) - 0.5) * 0.3, "n c -> n c 1 1")
    grating = grating * rearrange((u(n) < 0.6).float(), "n -> n 1 1 1")
    slope = rearrange(torch.cos(u(n) * 2 * math.pi), "n -> n 1 1") * xs
    gradient = rearrange(slope, "n h w -> n 1 h w") * rearrange((u(n, 3) - 0.5) * 0.3, "n c -> n c 1 1")
    return blotches + grating + gradient


def _blur(img: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with one sigma (px) per image, (N, C, H, W) -> same; sigma 0 leaves an image as is."""
    n, c = img.shape[:2]
    x = torch.arange(-2, 3, dtype=img.dtype)
    k = torch.exp(-rearrange(x, "k -> 1 k") ** 2 / (2 * rearrange(sigma.clamp(min=1e-3), "n -> n 1") ** 2))
    k = repeat(k / k.sum(1, keepdim=True), "n k -> (n c) 1 1 k", c=c)   # (N·C, 1, 1, 5)
    flat = rearrange(img, "n c h w -> 1 (n c) h w")
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), k, groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="replicate"), rearrange(k, "m 1 1 k -> m 1 k 1"), groups=n * c)
    return rearrange(flat, "1 (n c) h w -> n c h w", n=n)


def render_class(crops: Sequence[np.ndarray], n: int, seed: int, canvas: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of one character from its glyph crops in F faces, a pure function of ``seed``.

    Image j uses face ``order[j mod F]`` (a seeded order of the faces, so each face appears
    ``n / F`` times, and a small ``n`` still sees several faces), then:

    * stroke weight: thinner, as drawn, bolder or boldest (an erosion or dilation of the master);
    * affine jitter: longer side 55-85 % of the canvas, width ×0.86-1.16, rotation ±20°, shear ±0.25, shift;
    * colours: ink and background at least 0.45 apart in RGB; a textured background (blotches,
      a grating, a gradient) and a lightly textured ink;
    * clutter: one to four line segments under the glyph, in random colours, some in the ink's;
    * blur (σ up to 0.8 px, half of the images) and Gaussian noise (σ 0.01-0.06).

    Returns (images (n, 3, canvas, canvas) uint8, face index (n,) into ``crops``).
    """
    with _one_thread():
        return _render(crops, n, seed, canvas)


def _render(crops: Sequence[np.ndarray], n: int, seed: int, canvas: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    masters = _masters(crops)                                         # (F, 4, M, M)
    order = torch.randperm(len(crops), generator=g)
    face = order[torch.arange(n) % len(crops)]
    weight = torch.randint(0, 4, (n,), generator=g)
    src = rearrange(masters[face, weight], "n h w -> n 1 h w")
    # output -> input coordinates (F.affine_grid): the inverse of scale, stretch, shear and rotation
    cover = 0.55 + 0.30 * u(n)                                        # glyph's longer side / canvas side
    scale = cover / FILL
    stretch = torch.exp((u(n) - 0.5) * 0.3)
    shear = (u(n) - 0.5) * 0.5
    angle = (u(n) - 0.5) * math.radians(40)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zeros, ones = torch.zeros(n), torch.ones(n)
    rot = rearrange(torch.stack([cos, -sin, sin, cos], -1), "n (i j) -> n i j", i=2)
    shr = rearrange(torch.stack([ones, shear, zeros, ones], -1), "n (i j) -> n i j", i=2)
    stc = rearrange(torch.stack([stretch, zeros, zeros, 1 / stretch], -1), "n (i j) -> n i j", i=2)
    forward = rearrange(scale, "n -> n 1 1") * (rot @ shr @ stc)      # (N, 2, 2) input -> output
    inverse = torch.linalg.inv(forward)
    shift = (u(n, 2) - 0.5) * 2 * rearrange(1.0 - cover, "n -> n 1") * 0.8
    theta = torch.cat([inverse, -(inverse @ rearrange(shift, "n c -> n c 1"))], dim=2)   # (N, 2, 3)
    grid = F.affine_grid(theta, [n, 1, canvas, canvas], align_corners=False)
    glyph = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (N, 1, H, W)
    # colours: ink far enough from the background to be seen
    ink, bg = 0.05 + 0.9 * u(n, 3), 0.05 + 0.9 * u(n, 3)
    for _ in range(50):
        close = (ink - bg).norm(dim=1) < 0.45
        if not close.any():
            break
        k = int(close.sum())
        ink[close], bg[close] = 0.05 + 0.9 * u(k, 3), 0.05 + 0.9 * u(k, 3)
    background = rearrange(bg, "n c -> n c 1 1") + _texture(n, canvas, g)
    ink_img = rearrange(ink, "n c -> n c 1 1") + 0.3 * _texture(n, canvas, g)
    strokes = _segments(n, canvas, g)                                 # (N, S, H, W)
    inky = u(n, strokes.shape[1]) < 0.3                               # some clutter in the ink's own colour
    colour = torch.where(rearrange(inky, "n s -> n s 1"), rearrange(ink, "n c -> n 1 c"), 0.05 + 0.9 * u(n, strokes.shape[1], 3))
    for s in range(strokes.shape[1]):
        alpha = strokes[:, s : s + 1]
        background = background * (1 - alpha) + rearrange(colour[:, s], "n c -> n c 1 1") * alpha
    img = background * (1 - glyph) + ink_img * glyph
    img = _blur(img, 0.8 * u(n) * (u(n) < 0.5).float())
    img = img + rearrange(0.01 + 0.05 * u(n), "n -> n 1 1 1") * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), face


# ---------------------------------------------------------------------------------------- cache
#: the code this process renders with (the choice of classes, then the rendering), read once at import
_SOURCE = Path(__file__).with_name("glyph_classes.py").read_bytes() + Path(__file__).read_bytes()


def _fingerprint(params: dict, source: bytes = _SOURCE) -> str:
    """Hash of the code (this module's source and :mod:`~bgtutorial.data.glyph_classes`'), the parameters,
    matplotlib's version and the font files' sizes: the name of the cache folder."""
    import matplotlib

    h = hashlib.sha256(source)
    fonts = {f.file: (font_dir() / f.file).stat().st_size for f in FACES}
    h.update(json.dumps({"params": params, "matplotlib": matplotlib.__version__, "fonts": fonts},
                        sort_keys=True).encode())
    return h.hexdigest()[:12]


def build_glyphs(root: str | Path = "data", num_classes: int | None = None, per_class: int = 60, seed: int = 0,
                 canvas: int = 32, progress: bool = True) -> Path:
    """Render the dataset once into ``<root>/glyphs-<hash>/glyphs.pt`` (and ``meta.json``); return that file.

    A second call with the same code and parameters finds the file and returns at once. The
    folder is written under a temporary name and renamed, so a reader never sees half of it.
    Each class is rendered from its own seed (``seed`` and the character), so a subset of the
    classes gets the very images the full set has.
    """
    if per_class < 2:
        raise ValueError(f"per_class must be >= 2 (a query needs a same-class image to retrieve), got {per_class}")
    if not 16 <= canvas <= 128:
        raise ValueError(f"canvas must be in [16, 128] px, got {canvas}")
    params = {"num_classes": num_classes, "per_class": per_class, "seed": seed, "canvas": canvas}
    folder = Path(root) / f"glyphs-{_fingerprint(params)}"
    path = folder / "glyphs.pt"
    if path.is_file():
        return path
    t0 = time.perf_counter()
    with _one_thread():
        sel = select_classes(num_classes)
        classes = list(sel.classes)
        images, labels, faces = [], [], []
        for label, char in enumerate(tqdm(classes, desc="rendering glyphs", disable=bars_disabled(progress))):
            found = sel.faces[char]
            crops = [_crop(face.file, code) for face, code in found]
            imgs, face_idx = render_class(crops, per_class, seed=seed * 1_000_003 + ord(char), canvas=canvas)
            images.append(imgs)
            labels += [label] * per_class
            faces += [found[i][0].name for i in face_idx.tolist()]
    seconds = time.perf_counter() - t0
    train, test = split_classes(classes)
    meta = {"classes": classes, "train_classes": train, "test_classes": test, "lookalikes_dropped": sel.twins,
            "faces_left_out": {c: list(p) for c, p in sel.pruned.items()},
            "faces": [f.name for f in FACES], "images": len(labels), "render_seconds": round(seconds, 2), **params}
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"images": torch.cat(images), "labels": torch.tensor(labels), "faces": faces, "meta": meta},
               tmp / "glyphs.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))
    try:
        os.replace(tmp, folder)            # atomic; fails if another process finished first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not path.is_file():
            raise
    return path


def _load_rendered(root: str | Path, num_classes: int | None, per_class: int, seed: int, canvas: int,
                   progress: bool) -> dict:
    """The rendered set of :func:`build_glyphs`, loaded; a cached ``glyphs.pt`` that cannot be read
    (truncated by a full disk or a killed copy, or not ours) is rendered again, with a warning."""
    path = build_glyphs(root, num_classes, per_class, seed, canvas, progress)
    try:
        data = torch.load(path, weights_only=True)
        if not {"images", "labels", "faces", "meta"} <= set(data):
            raise KeyError("images, labels, faces, meta")
        return data
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, TypeError) as err:
        warnings.warn(f"{path} could not be read ({type(err).__name__}); rendering it again", stacklevel=3)
    for name in ("glyphs.pt", "meta.json"):       # the cache folder is ours (named by the render's hash)
        (path.parent / name).unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError as err:
        raise UserError(f"{path.parent} holds files that are not the glyph cache's; move them away so that it can "
                        f"be rendered again ({err.strerror})") from None
    return torch.load(build_glyphs(root, num_classes, per_class, seed, canvas, progress), weights_only=True)


class GlyphsRetrieval(Dataset):
    """Rendered glyphs for zero-shot retrieval: 3×canvas×canvas tensors in [0, 1], CUB-200's protocol.

    ``split="train"`` holds a fixed, seeded half of the classes, ``split="test"`` the other,
    unseen half; labels are 0..C-1 within the split, ``classes[label]`` is the character.
    About 200 classes with ``per_class`` images each (60: CUB has about 59), rendered once and
    cached under ``root`` (:func:`build_glyphs`). ``images`` holds them as uint8 (N, 3, H, W);
    ``faces`` names the font face of each image.

    Args mirror :class:`DigitsRetrieval`: ``seed`` fixes the renderings (keep it fixed across
    training seeds, as CUB's photographs are), ``canvas`` is the side in pixels, ``transform``
    applies to a (3, H, W) float tensor. ``num_classes`` takes an evenly spaced subset of the
    classes (smoke runs: 20).
    """

    def __init__(self, split: Literal["train", "test"] = "train", per_class: int = 60, seed: int = 0,
                 canvas: int = 32, transform: Callable | None = None, num_classes: int | None = None,
                 root: str | Path = "data", progress: bool = True) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        data = _load_rendered(root, num_classes, per_class, seed, canvas, progress)
        meta = data["meta"]
        names = meta["train_classes"] if split == "train" else meta["test_classes"]
        new_label = {meta["classes"].index(c): i for i, c in enumerate(names)}
        keep = [i for i, y in enumerate(data["labels"].tolist()) if y in new_label]
        self.split, self.transform, self.classes = split, transform, list(names)
        self.images = data["images"][keep]                            # (N, 3, H, W) uint8
        self.targets = [new_label[y] for y in data["labels"][keep].tolist()]
        self.faces = [data["faces"][i] for i in keep]
        self.scripts = [script_of(c) for c in self.classes]
        self.render_seconds = meta["render_seconds"]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index].float() / 255.0
        return (self.transform(img) if self.transform else img), self.targets[index]

    def pixels(self) -> torch.Tensor:
        """Every image as float32 in [0, 1], (N, 3, H, W) (what a raw-pixel retriever compares)."""
        return self.images.float() / 255.0

    def __repr__(self) -> str:
        shown = "".join(self.classes[:12]) + ("…" if len(self.classes) > 12 else "")
        return f"GlyphsRetrieval(split={self.split!r}, images={len(self)}, classes={len(self.classes)}: {shown})"
