"""The glyph backbone's pretraining corpus: characters the retrieval task never shows.

Both papers fine-tune a backbone pretrained on ImageNet, and ImageNet holds bird classes that
overlap CUB-200's test species: a pretrained ResNet has, in part, already seen the "unseen"
classes. We do not repeat that here. The glyph backbone is pretrained on characters chosen so
that none of them is, contains or looks like a character of the retrieval task
(:func:`pretraining_characters`):

1. **Drawn by the bundled fonts**: every code point that at least :data:`MIN_FACES` of the
   Unicode faces of :data:`~bgtutorial.data.glyph_classes.FACES` map to an inked glyph, of a letter,
   number or symbol category (``L*``, ``N*``, ``S*``; no marks, punctuation, spaces, controls).
2. **Not a candidate of the retrieval set**: none of the Latin, digit, Greek, Cyrillic,
   Armenian, Georgian or Hebrew candidates, whether it became a class or was merged into one as
   a look-alike (:data:`~bgtutorial.data.glyph_classes.SCRIPTS`).
3. **No retrieval character inside it**: its compatibility decomposition (NFKD) holds none of
   those candidates, so é (e + accent), ǅ (D + ž), 𝐀 (bold A), ² (2) and Ⓐ are left out.
4. **Not a look-alike of a retrieval class, by a stricter rule** (:func:`leakage_distances`):
   the retrieval set merges two characters when at most 3 % of either one's ink is unmatched
   in a quarter of the faces that have both. For leakage we compare *across* faces (any face
   of the corpus character against any face of the class, the corpus glyph stretched in width)
   and keep the closest pair; a character is left out when that share is at most
   :data:`LEAKAGE_SHARE` (15 %, five times the merge threshold). ∪ (U), ⊂ (C), ∑ (Σ), ı (l) go.
5. **No retrieval class inside it, with strokes added** (:func:`containment_distances`): one-sided,
   a character is left out when at most :data:`LEAKAGE_SHARE` of a class's ink is unmatched by it, in
   a pair of faces where its own ink beyond the class is at most :data:`CONTAIN_EXTRA` (half) of it:
   the class plus a hook, a descender, a curl or a bar, however far the added stroke puts it by rule 4.
6. **Not named after a retrieval candidate** (:func:`named_after`): a letter named "X WITH …",
   "TURNED X", "SIDEWAYS X", "SMALL CAPITAL X", or a digraph of X, where X (in either case, in any of
   the candidates' scripts, so a cross-script homoglyph of a class too) is a retrieval candidate:
   Ӽ (HA WITH HOOK, X), Ґ (GHE WITH UPTURN, Γ), ȵ (N WITH CURL, n), ʞ (TURNED K), ʣ (DZ DIGRAPH).
7. **One class per look-alike group inside the corpus**: the retrieval set's own merge rule
   (:func:`~bgtutorial.data.glyph_classes.dedupe`, code-point order) among the characters left, so two
   pretraining classes are not the same drawing (the macron ¯ and the modifier ˉ are one class).

The corpus is rendered with the very nuisances of the retrieval set
(:func:`~bgtutorial.data.glyphs.render_class`), from seeds that differ from the retrieval
renderings' (:func:`build_corpus`). ``tests/test_corpus.py`` proves it disjoint from both
halves of the retrieval split.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
import unicodedata
from pathlib import Path
from typing import Sequence

import torch
from einops import rearrange, repeat
from tqdm.auto import tqdm

from ..utils import bars_disabled
from .glyph_classes import (ASPECTS, FACES, LOOKALIKE_QUANTILE, LOOKALIKE_RADIUS, LOOKALIKE_SHARE, MIN_FACES,
                            REFERENCE_SIZE, _charmap, _crop, candidate_characters, dedupe, faces_of, lookalike_matrix,
                            near_ink, reference_masks, select_classes)
from .glyphs import _one_thread, render_class

__all__ = ["pretraining_characters", "corpus_candidates", "leakage_distances", "containment_distances", "named_after",
           "closest_pairs",
           "build_corpus", "LEAKAGE_SHARE", "CONTAIN_EXTRA", "CATEGORIES"]

#: Unicode general categories a corpus character may have: letters, numbers, symbols
CATEGORIES = ("L", "N", "S")
#: leakage: a corpus character is left out when at most this share of ink is unmatched against a
#: retrieval class in its closest pair of faces (the merge rule of the retrieval set uses 3 %)
LEAKAGE_SHARE = 0.15
#: float32 shares within this of the threshold count as at it (3/20 of the ink is 0.1500000060 in float32)
SHARE_TOLERANCE = 1e-6
#: containment: a character is left out when at most LEAKAGE_SHARE of a class's ink is unmatched by it, in a
#: face pair where at most this share of the character's own ink lies outside the class (the added stroke)
CONTAIN_EXTRA = 0.5
#: renderings of a corpus class are seeded apart from the retrieval set's (seed·1_000_003 + code point)
CORPUS_SEED_OFFSET = 7_777_777


def corpus_candidates(min_faces: int = MIN_FACES) -> list[str]:
    """Rules 1-3: every character the Unicode faces draw (``min_faces`` or more of them), of a letter,
    number or symbol category, that neither is nor decomposes into a retrieval candidate; code-point order."""
    banned = set(candidate_characters())
    codes: set[int] = set()
    for face in FACES:
        if not face.tex:
            codes |= set(_charmap(face.file)[0])
    out = []
    for code in sorted(codes):
        char = chr(code)
        if unicodedata.category(char)[0] not in CATEGORIES or char in banned:
            continue
        if set(unicodedata.normalize("NFKD", char)) & banned:
            continue
        if len(faces_of(char)) >= min_faces:
            out.append(char)
    return out


#: the scripts of the retrieval candidates, as Unicode names spell them
_SCRIPT_WORDS = ("LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "GEORGIAN", "HEBREW")


def named_after(char: str, banned: str | set[str]) -> str | None:
    """The retrieval candidate a character is named after, or None (rule 6 of the module docstring).

    For a letter of a candidate script (or a modifier letter, read as Latin), named
    "<script> <case> LETTER <words> X [WITH …]": X is the letter whose name is the last words before
    "WITH" (a hook, a descender, a stroke, an upturn), in the same script and case, so "TURNED X",
    "SIDEWAYS X", "REVERSED X", "SOFT X" and "X WITH …" are named after X; "SMALL CAPITAL X" after
    the capital. A Latin digraph or ligature ("DZ DIGRAPH", "AV", "MIDDLE-WELSH LL") is named after
    each letter it joins. Such letters have no Unicode decomposition, so rule 3 misses them.
    """
    banned = set(banned)
    name = unicodedata.name(char, "")
    head, sep, rest = name.partition("LETTER ")
    if not sep:
        return None
    script = next((w for w in head.split() if w in _SCRIPT_WORDS), "LATIN" if head.startswith("MODIFIER") else None)
    if script is None:
        return None
    words = rest.split(" WITH ")[0].replace(" DIGRAPH", "").replace(" LIGATURE", "").split()
    case = "SMALL" if "SMALL LETTER" in name or head.startswith("MODIFIER") else "CAPITAL"
    if words[:2] == ["SMALL", "CAPITAL"]:
        case, words = "CAPITAL", words[2:]
    elif words[:1] in (["SMALL"], ["CAPITAL"]):
        case, words = words[0], words[1:]
    for k in range(len(words)):
        try:
            found = unicodedata.lookup(f"{script} {case} LETTER {' '.join(words[k:])}")
        except KeyError:
            continue
        if found in banned:
            return found
    last = words[-1].split("-")[-1] if words else ""
    if script == "LATIN" and len(last) == 2 and last.isalpha() and last.isascii():   # DZ, AV, LL, AE, ...
        for letter in last:
            for c in (case, "CAPITAL", "SMALL"):
                found = unicodedata.lookup(f"LATIN {c} LETTER {letter}")
                if found in banned:
                    return found
    return None


def _far(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """(N, H, W) bool ink -> (N, H, W) bool: pixels farther than ``radius`` from any ink."""
    return rearrange(~near_ink(rearrange(masks.float(), "n h w -> n 1 h w"), radius), "n 1 h w -> n h w")


def leakage_distances(chars: list[str], classes: list[str], radius: float = LOOKALIKE_RADIUS,
                      chunk: int = 4096) -> torch.Tensor:
    """How far each character is from looking like each class, across faces: (len(chars), len(classes)).

    Entry (a, b) is the smallest, over every face of a (width-stretched by :data:`ASPECTS`) and
    every face of b, of the larger of two shares: a's ink farther than ``radius`` px from b's
    ink, and b's ink farther than ``radius`` from a's (the chamfer test of
    :func:`~bgtutorial.data.glyph_classes.lookalike_distances`, at :data:`REFERENCE_SIZE` px, but
    comparing *any* two faces rather than the same face). Regular and italic faces, as there.
    """
    return _pair_shares(chars, classes, radius, chunk, torch.maximum)


def containment_distances(chars: list[str], classes: list[str], radius: float = LOOKALIKE_RADIUS,
                          extra: float = CONTAIN_EXTRA, chunk: int = 4096) -> torch.Tensor:
    """How far each character is from *holding* each class, across faces: (len(chars), len(classes)).

    One-sided: entry (a, b) is the smallest, over the same face pairs as :func:`leakage_distances`, of
    the share of b's ink farther than ``radius`` px from a's ink, among the pairs where b accounts for
    most of a (at most ``extra`` of a's ink is farther than ``radius`` from b's). A character that
    draws a class's whole shape plus a hook, a descender or a stroke is near 0 here, however far the
    added stroke puts it by the two-sided rule.
    """
    def combine(a_far: torch.Tensor, b_far: torch.Tensor) -> torch.Tensor:
        return torch.where(a_far <= extra, b_far, torch.full_like(b_far, float("inf")))

    return _pair_shares(chars, classes, radius, chunk, combine)


def _pair_shares(chars: list[str], classes: list[str], radius: float, chunk: int, combine) -> torch.Tensor:
    """(len(chars), len(classes)): the smallest ``combine(a_far, b_far)`` over face pairs and stretches,
    where ``a_far`` is the share of a's ink far from b's and ``b_far`` the share of b's ink far from a's."""
    light = [f for f in FACES if not f.bold]
    ma, pa = reference_masks(chars, light, REFERENCE_SIZE, ASPECTS)           # (Na, F, A, H, W), (Na, F)
    mb, pb = reference_masks(classes, light, REFERENCE_SIZE, (1.0,))         # (Nb, F, 1, H, W)
    owner_a = _row_owner(pa, len(ASPECTS))                                   # (Ra,) char index of each row
    ink_a = rearrange(ma, "n f a h w -> (n f a) h w")[owner_a >= 0]
    owner_a = owner_a[owner_a >= 0]
    owner_b = _row_owner(pb, 1)
    ink_b = rearrange(mb, "n f a h w -> (n f a) h w")[owner_b >= 0]
    owner_b = owner_b[owner_b >= 0]
    far_a, far_b = _far(ink_a, radius), _far(ink_b, radius)
    flat = lambda t: rearrange(t.float(), "n h w -> n (h w)")  # noqa: E731
    ink_b_f, far_b_f = flat(ink_b), flat(far_b)                                # (Rb, K)
    area_b = ink_b_f.sum(1).clamp(min=1)
    out = torch.full((len(chars), len(classes)), float("inf"))
    for start in range(0, len(owner_a), chunk):
        ia, fa = flat(ink_a[start:start + chunk]), flat(far_a[start:start + chunk])   # (R, K)
        a_far = (ia @ far_b_f.T) / rearrange(ia.sum(1).clamp(min=1), "r -> r 1")       # (R, Rb)
        b_far = (fa @ ink_b_f.T) / rearrange(area_b, "rb -> 1 rb")
        d = combine(a_far, b_far)
        # smallest over the rows of one character, then over the rows of one class
        rows = owner_a[start:start + chunk]
        per_a = torch.full((len(chars), d.shape[1]), float("inf")).scatter_reduce(
            0, repeat(rows, "r -> r c", c=d.shape[1]), d, reduce="amin")                         # (Na, Rb)
        per_ab = torch.full((len(chars), len(classes)), float("inf")).scatter_reduce(
            1, repeat(owner_b, "c -> r c", r=len(chars)), per_a, reduce="amin")                 # (Na, Nb)
        out = torch.minimum(out, per_ab)
    return out


def _row_owner(present: torch.Tensor, aspects: int) -> torch.Tensor:
    """(N, F) presence -> (N·F·aspects,) the character index of each mask row, -1 where the face lacks it."""
    idx = torch.where(present, rearrange(torch.arange(len(present)), "n -> n 1"), -1)
    return repeat(idx, "n f -> (n f a)", a=aspects)


@functools.lru_cache(maxsize=2)
def pretraining_characters(share: float = LEAKAGE_SHARE) -> tuple[str, ...]:
    """The pretraining corpus (rules 1-7 of the module docstring), in code-point order.

    Deterministic: a pure function of the fonts and this code (about 90 s on 2 CPU cores; the
    shipped weights' JSON lists the result, and a test checks the two agree).
    """
    retrieval = list(select_classes().classes)
    banned = set(candidate_characters())
    with _one_thread():
        cands = [c for c in corpus_candidates() if named_after(c, banned) is None]
        dist = leakage_distances(cands, retrieval)
        held = containment_distances(cands, retrieval)
    cut = share + SHARE_TOLERANCE                 # a share computed in float32 at exactly 15 % counts as 15 %
    clean = [c for c, d, h in zip(cands, dist.amin(1).tolist(), held.amin(1).tolist()) if d > cut and h > cut]
    light = [f for f in FACES if not f.bold]
    kept, _ = dedupe(clean, lookalike_matrix(clean, light, LOOKALIKE_QUANTILE), LOOKALIKE_SHARE)
    return tuple(kept)


def closest_pairs(chars: Sequence[str], classes: Sequence[str]) -> dict[str, list[tuple[str, str, float]]]:
    """For each retrieval class, its closest corpus character under each shape rule:
    ``{"look-alike": [(class, char, share), ...], "containment": [...]}``, each list sorted from the
    closest pair; a pair passes a rule (and its character would be left out) at a share of
    :data:`LEAKAGE_SHARE` or less."""
    out = {}
    for rule, fn in (("look-alike", leakage_distances), ("containment", containment_distances)):
        d = fn(list(chars), list(classes))                           # (chars, classes)
        best, idx = d.min(0)
        out[rule] = sorted(((cls, chars[int(i)], float(v)) for cls, i, v in zip(classes, idx, best)),
                           key=lambda t: t[2])
    return out


def build_corpus(characters: list[str] | tuple[str, ...], root: str | Path = "data", per_class: int = 40,
                 seed: int = 0, canvas: int = 32, progress: bool = True) -> Path:
    """Render ``per_class`` images of every corpus character into ``<root>/corpus-<hash>/corpus.pt``.

    The file holds ``images`` (N, 3, canvas, canvas) uint8, ``labels`` (N,) (index into
    ``characters``) and ``characters``. Rendered as the retrieval set is (all the faces that draw a
    character, the same nuisances), each class from its own seed, offset from the retrieval
    renderings' seeds. Written under a temporary name and renamed; a second call returns at once.
    """
    params = {"characters": "".join(characters), "per_class": per_class, "seed": seed, "canvas": canvas,
              "source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(root) / f"corpus-{key}"
    path = folder / "corpus.pt"
    if path.is_file():
        return path
    images, labels = [], []
    t0 = time.perf_counter()
    with _one_thread():
        for label, char in enumerate(tqdm(characters, desc="rendering the corpus", disable=bars_disabled(progress))):
            found = faces_of(char)
            if not found:
                raise ValueError(f"no bundled face draws {char!r} (U+{ord(char):04X}): not a corpus character")
            crops = [_crop(face.file, code) for face, code in found]
            imgs, _ = render_class(crops, per_class, seed=(seed + CORPUS_SEED_OFFSET) * 1_000_003 + ord(char),
                                   canvas=canvas)
            images.append(imgs)
            labels += [label] * per_class
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"images": torch.cat(images), "labels": torch.tensor(labels), "characters": list(characters),
                "render_seconds": round(time.perf_counter() - t0, 2)}, tmp / "corpus.pt")
    try:
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not path.is_file():
            raise
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m bgtutorial.data.corpus --closest FILE``: draw each rule's closest corpus/class pairs
    for the shipped corpus (the figure in docs/results.md)."""
    import argparse

    from ..models import GLYPH_WEIGHTS

    p = argparse.ArgumentParser(prog="python -m bgtutorial.data.corpus", description=main.__doc__)
    p.add_argument("--closest", required=True, help="PNG file to write")
    p.add_argument("--k", type=int, default=8)
    a = p.parse_args(argv)
    from ..plots.images import closest_pairs_figure

    chars = json.loads(GLYPH_WEIGHTS.with_suffix(".json").read_text())["characters"]
    pairs = closest_pairs(chars, list(select_classes().classes))
    closest_pairs_figure(pairs, a.k, LEAKAGE_SHARE).savefig(a.closest, dpi=110)
    for rule, rows in pairs.items():
        print(rule, ", ".join(f"{c} / {ch} (U+{ord(ch):04X}) {d:.3f}" for c, ch, d in rows[:a.k]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
