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

Four rules, each a function with a test (``tests/test_data_glyphs.py``):

* **Coverage** (:func:`glyph_code`): a face has a character when its character map sends the
  character to a real glyph (not the ``.notdef`` box) that leaves ink; the Computer Modern faces
  use TeX's own encoding, so there the glyph is looked up by its name (``Gamma`` sits at 0xA1).
* **Look-alikes** (:func:`lookalike_distances`, :func:`select_classes`): characters that look
  the same (Latin A, Greek Alpha, Cyrillic A; O and 0; l and I; C and c once sizes are
  normalised) must not become two classes. In a face, two characters are as far apart as the
  share of either one's ink lying more than 1.5 px from the other's ink, both drawn to fill a
  32 px box, one of them stretched in width by up to ±25 % to fit the other best. A pair is one
  class when that share is at most 3 % in a quarter of the regular and italic faces that have
  both; the candidates are scanned in script order (Latin first) and the first of a pair kept.
  A face in which two kept classes still look alike (Cyrillic и is an italic Latin u) is left
  out for both, so no face draws two classes alike.
* **Protocol** (:func:`split_classes`): a fixed, seeded half of the classes trains, the other
  half is retrieved, as CUB's 100 + 100; labels are 0..C-1 within each split, the class names
  are the characters themselves.
* **Rendering and cache** (:func:`render_class`, :func:`build_glyphs`): every image is a pure
  function of (character, seed); the whole set is rendered once (seconds, progress bar) into
  ``<root>/glyphs-<hash>/``, written atomically, where the hash covers this module's source as
  imported, the parameters, matplotlib's version and the font files: changing the rendering
  code renders again.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import time
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..utils import UserError, bars_disabled

__all__ = ["GlyphsRetrieval", "FACES", "SCRIPTS", "Face", "candidate_characters", "glyph_code", "faces_of",
           "reference_masks", "near_ink", "lookalike_distances", "lookalike_matrix", "dedupe", "select_classes", "split_classes", "render_class",
           "build_glyphs", "font_dir", "Selection", "script_of"]


@dataclass(frozen=True)
class Face:
    """One font file of matplotlib's: a display name, the file, its weight, its encoding."""
    name: str
    file: str
    bold: bool = False
    tex: bool = False      # TeX-encoded (Computer Modern): glyphs are found by name, not by code point

    @property
    def light(self) -> str:
        """The regular or italic face whose look-alike test this face follows (itself when not bold)."""
        return self.name.replace(" Bold", "") if self.bold else self.name


#: The faces a class is rendered in. Left out on purpose: LastResort (every glyph is a box that
#: names its Unicode block), STIXNonUnicode and STIXSize* (alternates and big delimiters),
#: cmsy10 / cmex10 (symbol fonts: their letters are calligraphic capitals or delimiter pieces),
#: the DejaVu "Display" files (a handful of symbols).
FACES: tuple[Face, ...] = (
    Face("DejaVu Sans", "DejaVuSans.ttf"),
    Face("DejaVu Sans Bold", "DejaVuSans-Bold.ttf", bold=True),
    Face("DejaVu Sans Oblique", "DejaVuSans-Oblique.ttf"),
    Face("DejaVu Sans Bold Oblique", "DejaVuSans-BoldOblique.ttf", bold=True),
    Face("DejaVu Serif", "DejaVuSerif.ttf"),
    Face("DejaVu Serif Bold", "DejaVuSerif-Bold.ttf", bold=True),
    Face("DejaVu Serif Italic", "DejaVuSerif-Italic.ttf"),
    Face("DejaVu Serif Bold Italic", "DejaVuSerif-BoldItalic.ttf", bold=True),
    Face("DejaVu Sans Mono", "DejaVuSansMono.ttf"),
    Face("DejaVu Sans Mono Bold", "DejaVuSansMono-Bold.ttf", bold=True),
    Face("DejaVu Sans Mono Oblique", "DejaVuSansMono-Oblique.ttf"),
    Face("DejaVu Sans Mono Bold Oblique", "DejaVuSansMono-BoldOblique.ttf", bold=True),
    Face("STIX General", "STIXGeneral.ttf"),
    Face("STIX General Bold", "STIXGeneralBol.ttf", bold=True),
    Face("STIX General Italic", "STIXGeneralItalic.ttf"),
    Face("STIX General Bold Italic", "STIXGeneralBolIta.ttf", bold=True),
    Face("Computer Modern Roman", "cmr10.ttf", tex=True),
    Face("Computer Modern Roman Bold", "cmb10.ttf", bold=True, tex=True),
    Face("Computer Modern Text Italic", "cmti10.ttf", tex=True),
    Face("Computer Modern Sans", "cmss10.ttf", tex=True),
    Face("Computer Modern Typewriter", "cmtt10.ttf", tex=True),
    Face("Computer Modern Math Italic", "cmmi10.ttf", tex=True),
)


def _chars(*ranges: tuple[int, int], skip: Sequence[int] = ()) -> str:
    return "".join(chr(c) for a, b in ranges for c in range(a, b + 1) if c not in skip)


#: Candidate characters by script, in the order that settles look-alikes (the first one is kept).
SCRIPTS: dict[str, str] = {
    "Latin": _chars((0x41, 0x5A), (0x61, 0x7A)),
    "digits": _chars((0x30, 0x39)),
    "Greek": _chars((0x391, 0x3A9), (0x3B1, 0x3C9), skip=(0x3A2,)),     # 0x3A2 is unassigned
    "Cyrillic": _chars((0x410, 0x44F)),
    "Armenian": _chars((0x531, 0x556), (0x561, 0x586)),
    "Georgian": _chars((0x10D0, 0x10F0)),                                # the 33 letters of modern Mkhedruli
    "Hebrew": _chars((0x5D0, 0x5EA)),
}

REFERENCE_SIZE = 32          # px: look-alikes are compared at the dataset's resolution
LOOKALIKE_RADIUS = 1.5       # px at REFERENCE_SIZE: ink closer than this to the other glyph's ink "matches"
LOOKALIKE_SHARE = 0.03       # look-alikes: at most this share of either glyph's ink is unmatched
ASPECTS = (0.8, 0.9, 1.0, 1.12, 1.25)   # width stretches tried (the rendering jitters the width by ±15 %)
LOOKALIKE_QUANTILE = 0.25    # ... in at least a quarter of the faces that have both
MIN_FACES = 4                # a class needs at least this many faces (Hebrew has the 4 DejaVu Sans ones)
FILL = 0.875                 # a normalised glyph's longer side fills this share of its box
RENDER_PT = 96               # font size of the master rasterisation (px per em)
MASTER = 64                  # side of the master mask the images are sampled from
SPLIT_SEED = 0               # the fixed, seeded train/test split of the classes


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread: thousands of small tensor ops go faster than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def font_dir() -> Path:
    """matplotlib's own TrueType folder (``mpl-data/fonts/ttf``): the same fonts on every machine."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def candidate_characters() -> str:
    """Every candidate character, scripts in :data:`SCRIPTS` order."""
    return "".join(SCRIPTS.values())


def script_of(char: str) -> str:
    """The :data:`SCRIPTS` key a candidate character belongs to."""
    return next(name for name, chars in SCRIPTS.items() if char in chars)


_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def glyph_names(char: str) -> set[str]:
    """Names a font may give ``char``'s glyph: Adobe-style (``A``, ``zero``, ``Gamma``, ``sigma1``) or ``uniXXXX``."""
    names = {f"uni{ord(char):04X}"}
    if char.isascii() and char.isalpha():
        names.add(char)
    elif char.isascii() and char.isdigit():
        names.add(_DIGITS[int(char)])
    greek = re.fullmatch(r"GREEK (CAPITAL|SMALL) LETTER (FINAL )?(\w+)", unicodedata.name(char, ""))
    if greek:
        base = greek[3].lower().replace("lamda", "lambda")
        names.add(base.capitalize() if greek[1] == "CAPITAL" else base + ("1" if greek[2] else ""))
    return names


@functools.lru_cache(maxsize=None)
def _charmap(file: str) -> tuple[dict[int, int], dict[str, int]]:
    """(code point -> glyph index, glyph name -> first code point) of a font file."""
    from matplotlib.ft2font import FT2Font

    ft = FT2Font(str(font_dir() / file))
    cmap = ft.get_charmap()
    by_name: dict[str, int] = {}
    for code, gid in sorted(cmap.items()):
        by_name.setdefault(ft.get_glyph_name(gid), code)
    return cmap, by_name


@functools.lru_cache(maxsize=None)
def _font(file: str):
    from PIL import ImageFont

    # the basic layout engine: one code point, one glyph, whatever text-shaping library is installed
    return ImageFont.truetype(str(font_dir() / file), RENDER_PT, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=None)
def _crop(file: str, code: int) -> np.ndarray | None:
    """The glyph of ``code`` in ``file`` at :data:`RENDER_PT`, cropped to its ink: (h, w) uint8, or None if blank."""
    from PIL import Image

    mask = _font(file).getmask(chr(code))
    img = Image.frombytes("L", mask.size, bytes(mask)) if mask.size[0] * mask.size[1] else None
    box = img.getbbox() if img is not None else None
    return None if box is None else np.asarray(img.crop(box))


def glyph_code(face: Face, char: str) -> int | None:
    """The code point to draw in ``face`` to get ``char``, or None when the face does not have it.

    A Unicode face has ``char`` when its character map sends it to a glyph other than index 0
    (``.notdef``, the empty box) and that glyph leaves ink. A TeX-encoded face (Computer Modern)
    has it when some code point holds a glyph named as ``char`` (:func:`glyph_names`): its ``A``
    is at 0x41, its ``Gamma`` at 0xA1, and its digits in math italic are old-style (``zerooldstyle``),
    which does not count.
    """
    cmap, by_name = _charmap(face.file)
    if face.tex:
        code = next((by_name[n] for n in sorted(glyph_names(char)) if n in by_name), None)
    else:
        code = ord(char) if cmap.get(ord(char), 0) != 0 else None
    return code if code is not None and _crop(face.file, code) is not None else None


def faces_of(char: str, faces: Sequence[Face] = FACES) -> list[tuple[Face, int]]:
    """The faces that have ``char``, each with the code point to draw there."""
    found = ((face, glyph_code(face, char)) for face in faces)
    return [(face, code) for face, code in found if code is not None]


def _fit(crop: np.ndarray, size: int, aspect: float = 1.0, fill: float = FILL) -> np.ndarray:
    """Scale an ink crop (h, w) so its longer side fills ``fill`` of a ``size`` box (width stretched by
    ``aspect`` first), centred: (size, size) float32 in [0, 1]."""
    from PIL import Image

    h, w = crop.shape
    w_eff = w * aspect
    s = size * fill / max(w_eff, h)
    new_w, new_h = max(1, round(w_eff * s)), max(1, round(h * s))
    small = Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.LANCZOS)
    out = Image.new("L", (size, size), 0)
    out.paste(small, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(out, dtype=np.float32) / 255.0


def reference_masks(chars: Sequence[str], faces: Sequence[Face] | None = None, size: int = REFERENCE_SIZE,
                    aspects: Sequence[float] = ASPECTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary reference renderings of every character in every face and width stretch.

    Args:
        chars: N characters.
        faces: F faces (default: the regular and italic ones of :data:`FACES`; bold strokes hide details).
    Returns:
        masks (N, F, A, size, size) bool, ink where the normalised rendering exceeds 0.5;
        present (N, F) bool, whether the face has the character.
    """
    faces = [f for f in FACES if not f.bold] if faces is None else list(faces)
    masks = torch.zeros(len(chars), len(faces), len(aspects), size, size, dtype=torch.bool)
    present = torch.zeros(len(chars), len(faces), dtype=torch.bool)
    for i, char in enumerate(chars):
        for j, face in enumerate(faces):
            code = glyph_code(face, char)
            if code is None:
                continue
            crop = _crop(face.file, code)
            present[i, j] = True
            for a, aspect in enumerate(aspects):
                masks[i, j, a] = torch.from_numpy(_fit(crop, size, aspect) > 0.5)
    return masks, present


def near_ink(ink: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels within ``radius`` px of any ink: (N, 1, H, W) float ink in {0, 1} -> (N, 1, H, W) bool."""
    r = int(radius)                                                   # pixel offsets are whole numbers
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disk = rearrange((yy ** 2 + xx ** 2 <= radius ** 2 + 1e-6).float(), "h w -> 1 1 h w")
    return F.conv2d(ink, disk, padding=r) > 0


def lookalike_distances(chars: Sequence[str], faces: Sequence[Face] | None = None, radius: float = LOOKALIKE_RADIUS,
                        aspects: Sequence[float] = ASPECTS) -> torch.Tensor:
    """How different two characters look in each face: (N, N, F), 0 for identical renderings, NaN where
    a face lacks one of the two.

    Entry (a, b, f) is the smallest, over the width stretches of either character, of the larger
    of two shares: the share of a's ink farther than ``radius`` px from b's ink, and the share of
    b's ink farther than ``radius`` from a's (a symmetric chamfer test at :data:`REFERENCE_SIZE` px).
    """
    if 1.0 not in aspects:
        raise ValueError("aspects must contain 1.0 (the unstretched rendering)")
    masks, present = reference_masks(chars, faces, aspects=aspects)
    n, n_faces, n_aspects, size, _ = masks.shape
    ink = rearrange(masks.float(), "n f a h w -> (n f a) 1 h w")
    near = near_ink(ink, radius)                                      # within `radius` of the glyph's ink
    ink = rearrange(ink, "(n f a) 1 h w -> f n a (h w)", n=n, f=n_faces).contiguous()
    far = rearrange((~near).float(), "(n f a) 1 h w -> f n a (h w)", n=n, f=n_faces).contiguous()
    area = ink.sum(-1).clamp(min=1)                                   # (F, N, A) ink pixels
    plain = aspects.index(1.0)
    out = torch.full((n, n, n_faces), float("nan"))
    for f in range(n_faces):
        # share of stretched a's ink far from plain b, and of plain b's ink far from stretched a: (A, N, N)
        s_far_from_p = torch.einsum("nak,mk->anm", ink[f], far[f, :, plain]) / rearrange(area[f], "n a -> a n 1")
        p_far_from_s = torch.einsum("mk,nak->anm", ink[f, :, plain], far[f]) / rearrange(area[f, :, plain], "m -> 1 1 m")
        best = torch.maximum(s_far_from_p, p_far_from_s).amin(0)      # (N_stretched, N_plain)
        best = torch.minimum(best, best.T)                            # stretch either one of the pair
        both = present[:, f, None] & present[None, :, f]              # (N, N)
        out[:, :, f] = torch.where(both, best, out[:, :, f])
    return out


def lookalike_matrix(chars: Sequence[str], faces: Sequence[Face] | None = None, quantile: float = LOOKALIKE_QUANTILE,
                     **kwargs) -> torch.Tensor:
    """How different two characters look, (N, N): the ``quantile`` of :func:`lookalike_distances` over the
    faces that have both (1 when none has both; 0 on the diagonal). With the default 0.25 a pair
    is as close as it looks in its closest quarter of faces: one odd face does not make look-alikes.
    """
    d = torch.nanquantile(lookalike_distances(chars, faces, **kwargs), quantile, dim=-1)
    d = torch.nan_to_num(d, nan=1.0)
    d.fill_diagonal_(0.0)
    return d


def dedupe(chars: Sequence[str], distance: torch.Tensor, share: float = LOOKALIKE_SHARE) -> tuple[list[str], dict[str, str]]:
    """Scan ``chars`` in order; keep one unless it is a look-alike (distance <= ``share``) of one kept.

    Returns the kept characters and ``{dropped: the kept look-alike it is closest to}``.
    """
    kept: list[int] = []
    twins: dict[str, str] = {}
    for i, char in enumerate(chars):
        close = [k for k in kept if distance[i, k] <= share]
        if close:
            twins[char] = chars[min(close, key=lambda k: float(distance[i, k]))]
        else:
            kept.append(i)
    return [chars[k] for k in kept], twins


@dataclass(frozen=True)
class Selection:
    """The classes of the dataset and the faces each one is drawn in (:func:`select_classes`)."""
    classes: tuple[str, ...]
    faces: dict[str, tuple[tuple[Face, int], ...]]   # character -> (face, code point) it is drawn with
    twins: dict[str, str]                            # dropped look-alike -> the kept class it looks like
    pruned: dict[str, tuple[str, ...]]               # character -> faces left out (look-alike there)


@functools.lru_cache(maxsize=4)
def _selection(share: float, quantile: float, min_faces: int) -> Selection:
    chars = [c for c in candidate_characters() if len(faces_of(c)) >= min_faces]
    light = [f for f in FACES if not f.bold]
    dist = lookalike_distances(chars, light)                              # (N, N, F_light)
    overall = torch.nan_to_num(torch.nanquantile(dist, quantile, dim=-1), nan=1.0)
    overall.fill_diagonal_(0.0)
    kept, twins = dedupe(chars, overall, share)
    idx = [chars.index(c) for c in kept]
    d = dist[idx][:, idx]                                                 # (K, K, F_light)
    d[torch.eye(len(idx), dtype=torch.bool)] = float("nan")
    clash = (d <= share).any(1)                                           # (K, F_light): NaN compares False
    faces, pruned = {}, {}
    for k, char in enumerate(kept):
        out = {light[f].name for f in torch.nonzero(clash[k]).flatten().tolist()}
        found = tuple((face, code) for face, code in faces_of(char) if face.light not in out)
        if len(found) >= min_faces:
            faces[char] = found
            if out:
                pruned[char] = tuple(face.name for face, _ in faces_of(char) if face.light in out)
    classes = tuple(c for c in kept if c in faces)
    return Selection(classes, faces, twins, pruned)


def select_classes(num_classes: int | None = None, share: float = LOOKALIKE_SHARE, quantile: float = LOOKALIKE_QUANTILE,
                   min_faces: int = MIN_FACES) -> Selection:
    """The classes: characters drawn in ``min_faces`` faces or more, one per group of look-alikes.

    1. Candidates (:data:`SCRIPTS`, in order) that at least ``min_faces`` faces have.
    2. :func:`dedupe` on the ``quantile`` of :func:`lookalike_distances` over the faces that have
       both characters: a pair that looks the same in a quarter of its faces is one class (the
       first in script order), e.g. O and 0, l and I, Latin and Cyrillic A.
    3. A face in which a kept class still looks like another kept class (Cyrillic и is Latin u
       in italics) is left out for both, with its bold sibling; a class left with fewer than
       ``min_faces`` faces is dropped. So no face draws two classes alike (``tests/test_data_glyphs.py``).

    ``num_classes`` (default: all, about 200) takes that many, evenly spaced along the script
    order so every script stays represented.
    """
    sel = _selection(share, quantile, min_faces)
    if num_classes is None:
        return sel
    if not 4 <= num_classes <= len(sel.classes):
        raise ValueError(f"num_classes must be in [4, {len(sel.classes)}] (the distinct characters), got {num_classes}")
    classes = tuple(sel.classes[i] for i in np.linspace(0, len(sel.classes) - 1, num_classes).round().astype(int))
    return Selection(classes, {c: sel.faces[c] for c in classes}, sel.twins,
                     {c: p for c, p in sel.pruned.items() if c in classes})


def split_classes(classes: Sequence[str], seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """CUB's protocol: a fixed, seeded half of the classes trains, the other half is retrieved.

    Returns (train classes, test classes), each in the order of ``classes``; the train half has
    the extra class when the count is odd.
    """
    order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed)).tolist()
    train = set(order[: (len(classes) + 1) // 2])
    return ([c for i, c in enumerate(classes) if i in train], [c for i, c in enumerate(classes) if i not in train])


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
_SOURCE = Path(__file__).read_bytes()     # the code this process renders with, read once at import


def _fingerprint(params: dict, source: bytes = _SOURCE) -> str:
    """Hash of the rendering code (this module's source), the parameters, matplotlib's version
    and the font files' sizes: the name of the cache folder."""
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
