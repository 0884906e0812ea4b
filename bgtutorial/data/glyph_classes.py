"""The glyphs' classes: which characters, drawn in which faces, one class per group of look-alikes.

A class of the embedded default dataset (:mod:`bgtutorial.data.glyphs`) is a *character*: Latin,
Greek, Cyrillic, Armenian, Georgian and Hebrew letters and the digits, drawn in every face of
matplotlib's own fonts that has it (DejaVu Sans, Serif and Mono and STIX General, each in regular,
bold, italic and bold italic, and six Computer Modern faces where they have the character).
Three rules, each a function with a test (``tests/test_data_glyphs.py``):

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

The glyph crops (:func:`_crop`) and their normalisation (:func:`_fit`) are shared with the
rendering; the pretraining corpus (:mod:`bgtutorial.data.corpus`) uses the same rules.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = ["FACES", "SCRIPTS", "Face", "candidate_characters", "glyph_code", "glyph_names", "faces_of",
           "reference_masks", "near_ink", "lookalike_distances", "lookalike_matrix", "dedupe", "select_classes",
           "split_classes", "font_dir", "Selection", "script_of"]


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
SPLIT_SEED = 0               # the fixed, seeded train/test split of the classes


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
