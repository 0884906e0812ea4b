"""The glyphs default: coverage, the look-alike rule (against a loop reference), the protocol,
deterministic rendering and the cache."""
import math
import time
from collections import Counter

import numpy as np
import pytest
import torch

from bgtutorial.data import GlyphsRetrieval
from bgtutorial.data import glyph_classes as GC
from bgtutorial.data import glyphs as G
from bgtutorial.metrics import recall_at_k
from bgtutorial.utils import UserError

FACE = {f.name: f for f in GC.FACES}


@pytest.fixture(scope="session")
def selection():
    return GC.select_classes()


@pytest.fixture(scope="session")
def small_root(tmp_path_factory):
    """A 20-class subset with 20 images per class, rendered once for the session."""
    root = tmp_path_factory.mktemp("glyphs")
    GlyphsRetrieval("train", per_class=20, num_classes=20, root=root, progress=False)
    return root


# ------------------------------------------------------------------------------------ coverage
def test_faces_are_matplotlibs_own_files():
    for face in GC.FACES:
        assert (GC.font_dir() / face.file).is_file(), face
    assert str(GC.font_dir()).replace("\\", "/").endswith("mpl-data/fonts/ttf")


def test_coverage_reads_names_in_tex_faces_and_code_points_elsewhere():
    assert GC.glyph_code(FACE["DejaVu Sans"], "A") == 0x41
    assert GC.glyph_code(FACE["Computer Modern Roman"], "Γ") == 0xA1          # TeX's OT1 slot for Gamma
    assert GC.glyph_code(FACE["Computer Modern Math Italic"], "α") == 0xAE
    assert GC.glyph_code(FACE["Computer Modern Math Italic"], "0") is None     # old-style figures do not count
    assert GC.glyph_code(FACE["Computer Modern Roman"], "Ж") is None           # no Cyrillic in Computer Modern
    assert GC.glyph_code(FACE["STIX General"], "ա") is None                    # no Armenian in STIX
    assert GC.glyph_code(FACE["DejaVu Sans"], " ") is None                     # a glyph without ink
    assert GC.glyph_names("ς") >= {"sigma1", "uni03C2"} and "lambda" in GC.glyph_names("λ")


def test_every_drawn_glyph_is_real_and_not_the_notdef_box(selection):
    """A rendering that equals the face's .notdef box (what an unmapped private-use code point
    draws) would be a face pretending to have the character."""
    for face in GC.FACES:
        notdef = GC._crop(face.file, 0xE000 + 17) if not face.tex else None
        for char in selection.classes:
            for f, code in selection.faces[char]:
                if f != face:
                    continue
                crop = GC._crop(face.file, code)
                assert crop is not None and crop.max() > 0
                if notdef is not None:
                    assert crop.shape != notdef.shape or not np.array_equal(crop, notdef), (face.name, char)


# ---------------------------------------------------------------------------------- look-alikes
def _chamfer_loop(a: torch.Tensor, b: torch.Tensor, radius: float) -> float:
    """max(share of a's ink farther than radius from b's ink, and the reverse), with plain loops."""
    def share(x, y):
        xs = [(i, j) for i in range(x.shape[0]) for j in range(x.shape[1]) if x[i, j]]
        ys = [(i, j) for i in range(y.shape[0]) for j in range(y.shape[1]) if y[i, j]]
        far = sum(1 for (i, j) in xs if min(math.hypot(i - k, j - m) for k, m in ys) > radius)
        return far / max(1, len(xs))
    return max(share(a, b), share(b, a))


def test_lookalike_distances_match_a_loop_reference():
    chars, faces = ["E", "F", "Ж"], [FACE["DejaVu Serif"], FACE["Computer Modern Roman"]]
    got = GC.lookalike_distances(chars, faces, aspects=(1.0,))
    masks, present = GC.reference_masks(chars, faces, aspects=(1.0,))
    for f in range(len(faces)):
        for a in range(len(chars)):
            for b in range(len(chars)):
                if present[a, f] and present[b, f]:
                    want = _chamfer_loop(masks[a, f, 0], masks[b, f, 0], GC.LOOKALIKE_RADIUS)
                    assert got[a, b, f].item() == pytest.approx(want, abs=1e-6)
                else:
                    assert math.isnan(got[a, b, f].item())
    assert present[2, 0] and not present[2, 1]                      # Ж: DejaVu yes, Computer Modern no


def test_stretching_only_brings_pairs_closer():
    chars = ["O", "0", "D", "E", "F"]
    plain = GC.lookalike_distances(chars, aspects=(1.0,))
    stretched = GC.lookalike_distances(chars)
    ok = ~plain.isnan()
    assert (stretched[ok] <= plain[ok] + 1e-6).all()
    assert torch.equal(stretched.isnan(), plain.isnan())
    assert torch.allclose(stretched, stretched.transpose(0, 1), equal_nan=True)


def test_lookalikes_collapse_and_different_characters_stay():
    chars = ["A", "Α", "А", "O", "0", "l", "I", "E", "F", "Ш", "Щ", "ж"]   # Latin, Greek, Cyrillic A; ...
    d = GC.lookalike_matrix(chars)
    share = GC.LOOKALIKE_SHARE
    assert d[0, 1] <= share and d[0, 2] <= share and d[1, 2] <= share   # the three A
    assert d[3, 4] <= share                                              # O and 0
    assert d[5, 6] <= share                                              # l and I
    assert d[7, 8] > share and d[9, 10] > share and d[0, 11] > share     # E/F, Ш/Щ, A/ж differ
    kept, twins = GC.dedupe(chars, d)
    assert kept == ["A", "O", "l", "E", "F", "Ш", "Щ", "ж"]
    assert twins == {"Α": "A", "А": "A", "0": "O", "I": "l"}


def test_dedupe_keeps_the_first_and_never_two_close_ones():
    d = torch.tensor([[0.0, 0.01, 0.5], [0.01, 0.0, 0.02], [0.5, 0.02, 0.0]])
    assert GC.dedupe(["x", "y", "z"], d, share=0.03) == (["x", "z"], {"y": "x"})
    assert GC.dedupe(["x", "y", "z"], d, share=0.001) == (["x", "y", "z"], {})


def test_no_two_classes_look_alike_in_any_face(selection):
    """The selection's promise: over the faces that draw both, no pair of classes is within the
    look-alike share in the quantile sense, nor in any single face that draws both."""
    classes = list(selection.classes)
    light = [f for f in GC.FACES if not f.bold]
    d = GC.lookalike_distances(classes, light)                        # (K, K, F)
    drawn = torch.tensor([[any(f.light == face.name for f, _ in selection.faces[c]) for face in light]
                          for c in classes])                         # (K, F): the class is drawn in that style
    both = drawn[:, None, :] & drawn[None, :, :]
    off_diagonal = ~torch.eye(len(classes), dtype=torch.bool)[:, :, None]
    close = (d <= GC.LOOKALIKE_SHARE) & both & off_diagonal
    pairs = [(classes[a], classes[b], light[f].name) for a, b, f in torch.nonzero(close).tolist()]
    assert not pairs, f"look-alike classes drawn in the same face: {pairs[:10]}"
    assert not set(selection.twins) & set(classes)


def test_about_two_hundred_classes_from_several_scripts(selection):
    assert 160 <= len(selection.classes) <= 240
    assert len(set(selection.classes)) == len(selection.classes)
    scripts = Counter(GC.script_of(c) for c in selection.classes)
    assert set(scripts) == set(GC.SCRIPTS) and min(scripts.values()) >= 5
    faces = [len(selection.faces[c]) for c in selection.classes]
    assert min(faces) >= GC.MIN_FACES
    assert "Α" in selection.twins and "А" in selection.twins and "A" in selection.classes


# ---------------------------------------------------------------------------- protocol and images
def test_split_is_fixed_disjoint_and_halves():
    classes = [chr(0x41 + i) for i in range(21)]
    train, test = GC.split_classes(classes)
    assert (train, test) == GC.split_classes(classes)
    assert not set(train) & set(test) and set(train) | set(test) == set(classes)
    assert len(train) == 11 and len(test) == 10
    assert GC.split_classes(classes, seed=1) != (train, test)


def test_dataset_protocol_shapes_and_names(small_root):
    train = GlyphsRetrieval("train", per_class=20, num_classes=20, root=small_root, progress=False)
    test = GlyphsRetrieval("test", per_class=20, num_classes=20, root=small_root, progress=False)
    assert len(train.classes) == len(test.classes) == 10 and not set(train.classes) & set(test.classes)
    assert all(len(c) == 1 for c in train.classes + test.classes)     # the class names are the characters
    for ds in (train, test):
        assert sorted(set(ds.targets)) == list(range(len(ds.classes)))
        assert Counter(ds.targets) == {c: 20 for c in range(len(ds.classes))}
        assert ds.images.shape == (len(ds), 3, 32, 32) and ds.images.dtype == torch.uint8
        x, y = ds[5]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and isinstance(y, int)
        assert len(ds.faces) == len(ds) and set(ds.faces) <= {f.name for f in GC.FACES}
    # several faces per class even in a small subset (a seeded face order per class)
    assert all(len({f for f, t in zip(test.faces, test.targets) if t == c}) >= 4 for c in range(10))


def test_raw_pixels_retrieve_poorly(small_root):
    test = GlyphsRetrieval("test", per_class=20, num_classes=20, root=small_root, progress=False)
    y = torch.tensor(test.targets)
    r1 = recall_at_k(test.pixels().flatten(1), y, ks=(1,))[1]
    chance = 19 / (len(y) - 1)
    assert r1 < chance + 0.2, f"raw pixels retrieve too well (R@1 {r1:.3f}, chance {chance:.3f})"


def test_rendering_is_deterministic_and_seeded():
    crops = [GC._crop(f.file, code) for f, code in GC.faces_of("Ж")]
    a, fa = G.render_class(crops, 12, seed=3)
    b, fb = G.render_class(crops, 12, seed=3)
    c, _ = G.render_class(crops, 12, seed=4)
    assert torch.equal(a, b) and torch.equal(fa, fb) and not torch.equal(a, c)
    assert a.shape == (12, 3, 32, 32) and a.dtype == torch.uint8
    assert len(set(fa.tolist())) == 12 if len(crops) >= 12 else len(set(fa.tolist())) == len(crops)
    assert not torch.equal(a[0], a[1])
    big, _ = G.render_class(crops, 6, seed=3, canvas=48)
    assert big.shape == (6, 3, 48, 48)


def test_images_vary_in_colour_and_position():
    """The nuisances act: mean colours and ink centroids spread over the images of one class."""
    crops = [GC._crop(f.file, code) for f, code in GC.faces_of("A")]
    imgs, _ = G.render_class(crops, 40, seed=0)
    x = imgs.float() / 255
    assert x.mean((2, 3)).std(0).min() > 0.08                         # background colour varies per channel
    assert x.std((1, 2, 3)).min() > 0.03                              # no blank image


# -------------------------------------------------------------------------------------- the cache
def test_cache_is_reused_and_keyed_by_parameters(tmp_path, monkeypatch):
    first = G.build_glyphs(tmp_path, num_classes=6, per_class=3, progress=False)
    assert first.is_file() and first.parent.name.startswith("glyphs-")
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]

    def fail(*args, **kwargs):
        raise AssertionError("rendered again although the cache was there")

    monkeypatch.setattr(G, "render_class", fail)
    assert G.build_glyphs(tmp_path, num_classes=6, per_class=3, progress=False) == first
    monkeypatch.undo()
    other = G.build_glyphs(tmp_path, num_classes=6, per_class=4, progress=False)
    assert other.parent != first.parent


def test_cache_key_follows_the_rendering_code():
    # the cache hashes the code that decides the images: the choice of classes, then the rendering
    assert G._SOURCE == open(GC.__file__, "rb").read() + open(G.__file__, "rb").read()
    key = G._fingerprint({"a": 1})
    assert G._fingerprint({"a": 1}) == key and G._fingerprint({"a": 2}) != key
    assert G._fingerprint({"a": 1}, source=G._SOURCE + b"\n# a changed renderer\n") != key


def test_smoke_subset_renders_in_seconds(tmp_path, selection):
    t0 = time.perf_counter()
    ds = GlyphsRetrieval("test", per_class=8, num_classes=20, root=tmp_path, progress=False)
    assert len(ds) == 10 * 8
    assert time.perf_counter() - t0 < 60 and ds.render_seconds < 60


def test_bad_arguments_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="split"):
        GlyphsRetrieval("val", root=tmp_path)
    with pytest.raises(ValueError, match="num_classes"):
        GC.select_classes(num_classes=10_000)
    with pytest.raises(ValueError, match="per_class"):
        G.build_glyphs(tmp_path, per_class=1)


# ------------------------------------------------------------------------------ the trainer's side
def test_glyphs_is_the_default_preset_and_trains_end_to_end(tmp_path, small_root):
    from bgtutorial.config import Config, load_config
    from bgtutorial.data.splits import build_datasets
    from bgtutorial.train import train

    assert Config().preset == "glyphs" and Config().dataset == "glyphs"
    preset = load_config("glyphs")
    assert preset.dataset == "glyphs" and preset.batch_size % preset.m == 0 and preset.batch_size // preset.m >= 30
    cfg = load_config("glyphs", out=str(tmp_path / "run"), data_root=str(small_root), glyph_classes=20,
                      glyph_per_class=20, epochs=2, steps_per_epoch=2, batch_size=16, m=4, embed_dim=16,
                      eval_nmi=False, progress=False)
    train_ds, test_ds = build_datasets(cfg)
    assert len(train_ds.classes) == len(test_ds.classes) == 10 and not set(train_ds.classes) & set(test_ds.classes)
    h = train(cfg)
    assert len(h["epochs"]) == 2 and 0.0 <= h["epochs"][-1]["R@1"] <= 1.0
    with pytest.raises(ValueError, match="glyph_per_class"):
        load_config("glyphs", glyph_per_class=1)


def test_a_truncated_cache_is_rendered_again(tmp_path):
    """Issue 23: a truncated data/glyphs-*/glyphs.pt gave a torch traceback on every run, never re-rendered."""
    path = G.build_glyphs(tmp_path, num_classes=6, per_class=3, progress=False)
    good = GlyphsRetrieval("train", per_class=3, num_classes=6, root=tmp_path, progress=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"glyphs.pt could not be read .*rendering it again"):
        again = GlyphsRetrieval("train", per_class=3, num_classes=6, root=tmp_path, progress=False)
    assert torch.equal(again.images, good.images) and again.targets == good.targets
    (path.parent / "mine.txt").write_text("not the cache's")             # a folder holding other files: say so
    path.write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(UserError, match=r"holds files that are not the glyph cache's"):
        GlyphsRetrieval("train", per_class=3, num_classes=6, root=tmp_path, progress=False)
    assert (path.parent / "mine.txt").read_text() == "not the cache's"
