"""The pretraining corpus never shows the retrieval task's characters: not one of them, not one of their
decompositions, not a look-alike of one (by the stricter cross-face rule), and the shipped list is what
the code selects."""
import json
import unicodedata

import numpy as np
import pytest
import torch

from bgtutorial.data import corpus, glyph_classes, glyphs
from bgtutorial.models import GLYPH_WEIGHTS

SHIPPED = json.loads(GLYPH_WEIGHTS.with_suffix(".json").read_text())["characters"]


def _naive_far_share(a: np.ndarray, b: np.ndarray, radius: float) -> float:
    """Share of a's ink pixels farther than ``radius`` from every ink pixel of b (loops over pixels)."""
    ink_a, ink_b = np.argwhere(a), np.argwhere(b)
    if len(ink_a) == 0:
        return 0.0
    far = 0
    for y, x in ink_a:
        if len(ink_b) == 0 or np.min((ink_b[:, 0] - y) ** 2 + (ink_b[:, 1] - x) ** 2) > radius ** 2 + 1e-6:
            far += 1
    return far / len(ink_a)


def _naive_pair_shares(chars, classes, combine):
    """(len(chars), len(classes)) by loops: the smallest ``combine(a_far, b_far)`` over every face of the
    character (each width stretch) and every face of the class, a_far / b_far the two far-ink shares."""
    light = [f for f in glyph_classes.FACES if not f.bold]
    ma, pa = glyph_classes.reference_masks(chars, light, glyph_classes.REFERENCE_SIZE, glyph_classes.ASPECTS)
    mb, pb = glyph_classes.reference_masks(classes, light, glyph_classes.REFERENCE_SIZE, (1.0,))
    r = glyph_classes.LOOKALIKE_RADIUS
    out = np.full((len(chars), len(classes)), np.inf)
    for i in range(len(chars)):
        for j in range(len(classes)):
            for fa in range(len(light)):
                for fb in range(len(light)):
                    if not (pa[i, fa] and pb[j, fb]):
                        continue
                    for s in range(len(glyph_classes.ASPECTS)):
                        a, b = ma[i, fa, s].numpy(), mb[j, fb, 0].numpy()
                        out[i, j] = min(out[i, j], combine(_naive_far_share(a, b, r), _naive_far_share(b, a, r)))
    return out


def test_leakage_distances_match_a_naive_loop_over_faces_and_stretches():
    chars, classes = ["∪", "⊂", "→"], ["U", "C", "x"]
    got = corpus.leakage_distances(chars, classes)
    np.testing.assert_allclose(got.numpy(), _naive_pair_shares(chars, classes, max), atol=1e-6)
    assert got[0, 0] <= corpus.LEAKAGE_SHARE and got[1, 1] <= corpus.LEAKAGE_SHARE   # ∪ ~ U, ⊂ ~ C: left out
    assert got[2].min() > corpus.LEAKAGE_SHARE                                       # → is like none of them


def test_candidates_leave_out_retrieval_characters_and_their_decompositions():
    cands = set(corpus.corpus_candidates())
    assert not cands & set(glyph_classes.candidate_characters())
    for char in "éǅ𝐀²ⒶⅫﬁάё":                     # accented, digraph, maths bold, superscript, circled, roman numeral...
        assert char not in cands, char
    assert {"→", "∞", "♣"} <= cands             # symbols the fonts draw stay candidates
    assert all(unicodedata.category(c)[0] in corpus.CATEGORIES for c in cands)


def test_the_shipped_corpus_is_disjoint_from_both_halves_of_the_retrieval_split():
    classes = list(glyph_classes.select_classes().classes)
    train, test = glyph_classes.split_classes(classes)
    banned = set(glyph_classes.candidate_characters()) | set(classes)
    assert len(SHIPPED) >= 600 and len(set(SHIPPED)) == len(SHIPPED)   # 641 since the containment and name rules
    for half in (train, test):
        assert not set(SHIPPED) & set(half)
        dist = corpus.leakage_distances(SHIPPED, half)                 # (corpus, half)
        assert dist.min().item() > corpus.LEAKAGE_SHARE + corpus.SHARE_TOLERANCE, SHIPPED[int(dist.min(1).values.argmin())]
    for char in SHIPPED:
        assert not set(unicodedata.normalize("NFKD", char)) & banned, char
        assert len(glyph_classes.faces_of(char)) >= glyph_classes.MIN_FACES, char


def test_containment_is_one_sided_and_matches_a_naive_loop():
    """A class with a stroke added is held by it (one-sided), however far the stroke puts the pair by the
    two-sided rule; checked against loops over faces and stretches."""
    chars, classes = ["Ӽ", "љ", "→"], ["X", "h", "x"]
    got = corpus.containment_distances(chars, classes)
    held = _naive_pair_shares(chars, classes, lambda a_far, b_far: b_far if a_far <= corpus.CONTAIN_EXTRA else np.inf)
    np.testing.assert_allclose(got.numpy(), held, atol=1e-6)
    two_sided = corpus.leakage_distances(["љ"], ["h"])
    assert got[1, 1] <= corpus.LEAKAGE_SHARE < two_sided[0, 0]          # held one-sided, not a look-alike
    assert got[2].min() > corpus.LEAKAGE_SHARE                           # → holds none of them


def test_names_catch_letters_drawn_as_a_class_plus_a_stroke():
    banned = set(glyph_classes.candidate_characters())
    expected = {"Ӽ": "Х", "Ґ": "Г", "Ꚋ": "Т", "Ԡ": "Л", "ȵ": "n", "ʞ": "k", "ʣ": "d", "ᴝ": "u", "Ꙥ": "Л"}
    for char, base in expected.items():
        assert corpus.named_after(char, banned) == base, char
    for char in "→∞♣ʃŋ⅋ᴥ˧ⴡ":          # symbols, letters not named after a candidate, other scripts
        assert corpus.named_after(char, banned) is None, char


def test_no_corpus_character_passes_any_rule_against_any_retrieval_class():
    """Every retrieval class's closest corpus characters under each rule, and none close enough to pass."""
    classes = list(glyph_classes.select_classes().classes)
    banned = set(glyph_classes.candidate_characters())
    pairs = corpus.closest_pairs(SHIPPED, classes)
    for rule, rows in pairs.items():
        assert len(rows) == len(classes)
        closest = rows[0]
        assert closest[2] > corpus.LEAKAGE_SHARE + corpus.SHARE_TOLERANCE, f"{rule}: {closest}"
    assert [c for c in SHIPPED if corpus.named_after(c, banned)] == []


def test_the_shipped_characters_are_what_the_code_selects():
    """The corpus is a pure function of the fonts and the code (about 90 s on 2 cores)."""
    assert list(corpus.pretraining_characters()) == SHIPPED


def test_build_corpus_renders_each_class_from_its_own_seed(tmp_path):
    chars = ["→", "♣", "∞"]
    path = corpus.build_corpus(chars, tmp_path, per_class=4, progress=False)
    data = torch.load(path, weights_only=True)
    assert data["images"].shape == (12, 3, 32, 32) and data["images"].dtype == torch.uint8
    assert data["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4 and data["characters"] == chars
    assert corpus.build_corpus(chars, tmp_path, per_class=4, progress=False) == path          # cached
    again = torch.load(corpus.build_corpus(chars[1:], tmp_path / "b", per_class=4, progress=False), weights_only=True)
    assert torch.equal(again["images"], data["images"][4:])                                 # per-class seeds
    crops = [glyph_classes._crop(f.file, c) for f, c in glyph_classes.faces_of("♣")]
    retrieval_seed, _ = glyphs.render_class(crops, 4, seed=0 * 1_000_003 + ord("♣"))
    assert not torch.equal(retrieval_seed, data["images"][4:8])                            # not the retrieval seeds
    with pytest.raises(ValueError, match="no bundled face"):
        corpus.build_corpus(["\u0378"], tmp_path / "c", per_class=2, progress=False)       # unassigned code point
