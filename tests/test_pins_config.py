"""Every config bound at its edge: the bound's own value (accepted or refused as the rule says), one step
past it, and booleans or floats where an integer is asked for (JSON's ``true`` is not 1)."""
import pytest

from bgtutorial.config import load_config
from bgtutorial.config_checks import MAX_EMBED_DIM, MAX_IMAGE_SIZE, MAX_SEED

EPS = 1e-9
ACCEPTED = [
    ("seed", 0), ("seed", MAX_SEED), ("data_seed", 0), ("data_seed", MAX_SEED), ("alpha", EPS),
    ("margin", 0.0), ("margin", 1.0 - EPS), ("curvature", EPS), ("clip_r", EPS), ("tau", EPS),
    ("embed_dim", MAX_EMBED_DIM), ("embed_dim", 1), ("image_size", 16), ("image_size", 128),
    ("resize", 0), ("resize", 32), ("resize", 2 * MAX_IMAGE_SIZE), ("glyph_per_class", 1000),
    ("glyph_per_class", 2), ("glyph_classes", 0), ("glyph_classes", 4), ("label_noise", 0.0),
    ("label_noise", 1.0 - EPS), ("corrupt", 0.0), ("corrupt", 1.0), ("imbalance", 1.0), ("crop_scale_min", 1.0),
    ("crop_scale_min", EPS), ("warm_epochs", 9), ("epochs", 1), ("eval_every", 1), ("steps_per_epoch", 0),
    ("clip_grad_norm", 0.0), ("clip_grad_value", 0.0), ("lr", EPS), ("lr_gamma", EPS), ("ckpt_every", 0),
    ("seed", 7), ("alpha", 32), ("margin", 0), ("epochs", 2),
]
REFUSED = [
    ("seed", -1), ("seed", MAX_SEED + 1), ("data_seed", -1), ("data_seed", MAX_SEED + 1), ("alpha", 0.0),
    ("alpha", -EPS), ("margin", 1.0), ("margin", -EPS), ("curvature", 0.0), ("clip_r", 0.0), ("tau", 0.0),
    ("curvature", -EPS), ("embed_dim", MAX_EMBED_DIM + 1), ("embed_dim", 0), ("image_size", 15),
    ("image_size", 129), ("resize", 31), ("resize", 2 * MAX_IMAGE_SIZE + 1), ("glyph_per_class", 1001),
    ("glyph_per_class", 1), ("glyph_classes", 3), ("label_noise", 1.0), ("label_noise", -EPS), ("corrupt", 1.0 + EPS),
    ("corrupt", -EPS), ("imbalance", 1.0 - EPS), ("crop_scale_min", 0.0), ("crop_scale_min", 1.0 + EPS),
    ("warm_epochs", 10), ("warm_epochs", -1), ("epochs", 0), ("eval_every", 0), ("steps_per_epoch", -1),
    ("clip_grad_norm", -EPS), ("clip_grad_value", -EPS), ("lr", 0.0), ("lr_gamma", 0.0), ("ckpt_every", -1),
    ("margin", float("nan")), ("alpha", float("inf")),
]
WRONG_TYPE = [("seed", True), ("epochs", True), ("batch_size", False), ("embed_dim", True), ("m", True),
              ("epochs", 2.0), ("seed", "0"), ("alpha", True), ("margin", False), ("pretrained", 1),
              ("lr", "1e-3")]


@pytest.mark.parametrize("field, value", ACCEPTED)
def test_a_value_on_the_allowed_side_of_its_bound_is_accepted(field, value):
    assert getattr(load_config("digits", **{field: value}), field) == value


@pytest.mark.parametrize("field, value", REFUSED)
def test_one_step_past_a_bound_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        load_config("digits", **{field: value})


@pytest.mark.parametrize("field, value", WRONG_TYPE)
def test_booleans_floats_and_strings_are_not_integers(field, value):
    with pytest.raises(ValueError, match=field):
        load_config("digits", **{field: value})


@pytest.mark.parametrize("classes, per_class, ok", [(200, 60, True), (201, 60, False), (200, 61, False),
                                                    (2, 1, True), (1, 8, False)])
def test_the_synthetic_archive_bounds(classes, per_class, ok):
    overrides = {"dataset": "fake-cub", "image_size": 32, "fake_classes": classes, "fake_per_class": per_class}
    if ok:
        assert load_config("digits", **overrides).fake_classes == classes
    else:
        with pytest.raises(ValueError, match="fake_classes|fake_per_class"):
            load_config("digits", **overrides)


@pytest.mark.parametrize("size, ok", [(16, True), (15, False), (MAX_IMAGE_SIZE, True), (MAX_IMAGE_SIZE + 1, False)])
def test_cub_image_size_bounds(size, ok):
    # a small evaluation batch keeps the memory bound (bgtutorial.resources) out of this test of the size bound
    overrides = {"dataset": "fake-cub", "image_size": size, "eval_batch_size": 2}
    if ok:
        assert load_config("digits", **overrides).image_size == size
    else:
        with pytest.raises(ValueError, match="image_size"):
            load_config("digits", **overrides)


@pytest.mark.parametrize("kwargs, ok", [({"num_heads": 1}, True), ({"num_heads": 0}, False),
                                        ({"num_heads": True}, False), ({"num_layers": 0}, False),
                                        ({"dropout": 0.0}, True), ({"dropout": 1.0 - EPS}, True),
                                        ({"dropout": 1.0}, False), ({"dropout": -EPS}, False),
                                        ({"ffn_dim": None}, True), ({"ffn_dim": 0}, False),
                                        ({"num_heads": 2.0}, False), ({"heads": 2}, False)])
def test_module_options_at_their_bounds(kwargs, ok):
    overrides = {"batch_module": "batchformer", "module_kwargs": kwargs}
    if ok:
        assert load_config("digits", **overrides).module_kwargs == kwargs
    else:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            load_config("digits", **overrides)
