"""Checks of a training config beyond "is it a known name": types, bounds with their reasons,
batch-module options, and the folders a run reads and writes.

:meth:`bgtutorial.config.Config.validate` calls :func:`check_types` first and :func:`check_bounds`
last; :func:`bgtutorial.config.load_config` calls :func:`check_preset_values` on a preset file's
contents, and :func:`bgtutorial.train.train` calls :func:`check_paths` before it touches the run
folder. Every message names the option (``--field``) and says what to pass instead; each bound
says why it is there (what the loss or the machine would do with the value).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import types
import typing
import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["check_types", "check_bounds", "check_preset_values", "check_module_kwargs", "check_paths", "path_problem",
           "MAX_SEED", "MAX_EMBED_DIM", "MAX_IMAGE_SIZE"]

#: seeds are non-negative and below 2**32: NumPy's legacy seeding (``np.random.seed``) takes no more
MAX_SEED = 2**32 - 1
#: the widest embedding accepted; the papers use 128-512 (CUB), and the head grows with it
MAX_EMBED_DIM = 16_384
#: the largest image side accepted: CUB's photographs are at most 500 px, so beyond this the
#: pixels are only interpolated while memory grows with the square of the side
MAX_IMAGE_SIZE = 1024
#: the config's field types as written in the dataclass (``from __future__ import annotations``)
_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "dict": dict}
_KIND = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a JSON object"}


def _fits(value: Any, kind: type) -> bool:
    """Whether ``value`` is of ``kind`` as a config field means it: bool is not a number, an int is a float."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _field_kinds(config_class: type) -> dict[str, tuple[type, Any]]:
    """``{field: (type, default)}`` of a config dataclass."""
    out = {}
    for f in dataclasses.fields(config_class):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = (_TYPES.get(f.type if isinstance(f.type, str) else f.type.__name__, object), default)
    return out


def check_types(values: Mapping[str, Any], config_class: type, where: str = "") -> None:
    """Raise ``ValueError`` when a value in ``values`` is not of its field's type (``"3"`` for an int).

    ``where`` names the source in the message ("preset file .../glyphs.toml"); the message shows the
    field's default as an example.
    """
    kinds = _field_kinds(config_class)
    for name, value in values.items():
        if name not in kinds:
            continue
        kind, default = kinds[name]
        if not _fits(value, kind):
            example = (f"--{name} '{{\"num_heads\": 4}}'" if kind is dict else
                       f"--{name} {str(default).lower() if kind is bool else default}")
            raise ValueError(f"{name} must be {_KIND.get(kind, kind.__name__)}, got {value!r} "
                             f"({type(value).__name__}){' in ' + where if where else ''}; e.g. {example}")


def check_preset_values(values: Mapping[str, Any], config_class: type, where: str,
                        tables: tuple[str, ...] = ()) -> None:
    """Refuse unknown fields (closest names suggested) and values of the wrong type in a preset file.

    ``tables``: the names of the per-module tables (``[bgformer]``) whose fields are checked too.
    """
    known = {f.name for f in dataclasses.fields(config_class)}
    for key, value in values.items():
        if key in tables and isinstance(value, dict):
            check_preset_values(value, config_class, f"{where} [{key}]")
            continue
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            raise ValueError(f"{where}: unknown field {key!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                             + "; fix or remove that line (every field is listed in bgtutorial.config.Config)")
    check_types({k: v for k, v in values.items() if k not in tables}, config_class, where)


def _module_class(kind: str) -> type | None:
    """The class behind a batch-module name, or ``None`` for one this module does not know."""
    if kind == "batchformer":
        from .batchformer import BatchFormer
        return BatchFormer
    if kind == "bgformer":
        from .bgformer import BGFormer
        return BGFormer
    return None


def _hint_name(hint: Any) -> str:
    """``int``, ``str or None``: an annotation as a reader says it."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return " or ".join(names.get(opt, getattr(opt, "__name__", str(opt))) for opt in options)


def _hint_fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a constructor annotation such as ``int``, ``float`` or ``str | None``."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any((value is None) if opt is type(None) else (isinstance(opt, type) and _fits(value, opt))
               for opt in options)


#: the batch-module options that count something (at least 1), and those that are a probability
_COUNTS = ("num_heads", "num_layers", "depth", "k", "ffn_dim", "ffn_mult")
_PROBABILITIES = ("dropout",)


def check_module_kwargs(batch_module: str, kwargs: Any) -> None:
    """Raise ``ValueError`` when ``kwargs`` are not options of the batch module's constructor.

    A JSON object whose keys are constructor parameters of :class:`~bgtutorial.batchformer.BatchFormer`
    or :class:`~bgtutorial.bgformer.BGFormer` (not ``dim``, which the backbone sets), with values of
    the annotated types; counts (heads, layers, k) at least 1 and dropout in [0, 1). The modules'
    own checks (``lam`` in [0, 1], heads dividing the width) run when the model is built.
    """
    if not isinstance(kwargs, dict):
        raise ValueError(f"module_kwargs must be a JSON object of the batch module's options, got {kwargs!r} "
                         f"({type(kwargs).__name__}); e.g. --module_kwargs '{{\"num_heads\": 4}}'")
    cls = _module_class(batch_module)
    if cls is None or not kwargs:
        return
    hints = typing.get_type_hints(cls.__init__)
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "dim")]
    for key, value in kwargs.items():
        if key not in params:
            raise ValueError(f"module_kwargs: {batch_module} has no option {key!r}; its options are "
                             f"{', '.join(params)} (e.g. --module_kwargs '{{\"{params[0]}\": ...}}')")
        if key in hints and not _hint_fits(value, hints[key]):
            raise ValueError(f"module_kwargs: {batch_module}'s {key} must be {_hint_name(hints[key])}, got {value!r} "
                             f"({type(value).__name__}); write it without quotes in the JSON, e.g. "
                             f"--module_kwargs '{{\"{key}\": {json.dumps(inspect.signature(cls.__init__).parameters[key].default)}}}'")
        if key in _COUNTS and value is not None and value < 1:
            raise ValueError(f"module_kwargs: {batch_module}'s {key} counts something, so it must be >= 1, got {value}")
        if key in _PROBABILITIES and not 0.0 <= value < 1.0:
            raise ValueError(f"module_kwargs: {batch_module}'s {key} is a probability of dropping a unit, so it "
                             f"must be in [0, 1), got {value}")


def _image_size_bounds(cfg: Any) -> tuple[int, int, str]:
    """``(smallest, largest, why)`` image side for the config's data and backbone."""
    if cfg.backbone == "vit_s16":
        return 224, 224, ("ViT-S/16's pretrained position embeddings are for 224 px (14 x 14 patches of 16 px); "
                          "use --image_size 224")
    if cfg.dataset == "glyphs":
        return 16, 128, "the glyphs are rendered on a canvas of image_size px, which the renderer supports from 16 to 128"
    if cfg.dataset == "digits":
        return 16, 128, "the digits are drawn on a canvas of image_size px; below 16 the 8x8 glyphs vanish"
    return 16, MAX_IMAGE_SIZE, (f"CUB's photographs are at most 500 px on a side: beyond {MAX_IMAGE_SIZE} px a batch "
                                f"of {cfg.batch_size} only grows in memory (3 x S x S floats per image); below 16 px "
                                "the networks' downsampling leaves nothing to pool")


def check_bounds(cfg: Any) -> None:
    """Raise ``ValueError`` for values that the loss or the machine cannot make sense of, with the reason."""
    for name in ("seed", "data_seed"):
        value = getattr(cfg, name)
        if not 0 <= value <= MAX_SEED:
            raise ValueError(f"{name}={value} is out of range: a seed is an integer in [0, 2**32 - 1] "
                             f"(NumPy's seeding takes no more); pass e.g. --{name} 0")
    if cfg.alpha <= 0:
        raise ValueError(f"alpha={cfg.alpha} must be > 0: Proxy-Anchor's alpha scales the similarities inside its "
                         "log-sum-exp (0 makes the loss a constant, a negative value pushes positives away); "
                         "pass e.g. --alpha 32 (Kim et al.)")
    if not 0.0 <= cfg.margin < 1.0:
        raise ValueError(f"margin={cfg.margin} must be in [0, 1): Proxy-Anchor's margin is on cosine similarities, "
                         "which are at most 1 (a margin of 1 or more cannot be met, a negative one rewards "
                         "positives for staying apart); pass e.g. --margin 0.1 (Kim et al.)")
    for name, what in (("curvature", "c of the Poincaré ball: c = 0 is flat space, where the ball's maps divide "
                                      "by sqrt(c); pass e.g. --curvature 0.1 (Hyp-ViT)"),
                       ("clip_r", "the radius features are clipped to before entering the ball: 0 sends every "
                                  "feature to its centre; pass e.g. --clip_r 2.3 (Hyp-ViT)"),
                       ("tau", "the temperature that divides the distances in the hyperbolic loss; pass e.g. "
                               "--tau 0.2 (Hyp-ViT)")):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name}={getattr(cfg, name)} must be > 0: it is {what}")
    if cfg.plain_weight != -1.0 and not 0.0 <= cfg.plain_weight <= 1.0:
        raise ValueError(f"plain_weight={cfg.plain_weight} must be in [0, 1] (alpha: alpha L(plain) + (1 - alpha) "
                         "L(module)), or -1 for one loss over both halves; pass e.g. --plain_weight 0.5")
    if cfg.plain_weight != -1.0 and cfg.batch_module == "none":
        raise ValueError(f"plain_weight={cfg.plain_weight} weights the plain and the batch module's halves of the "
                         "loss: the baseline has no module half; leave plain_weight at -1 or pass a batch_module")
    if cfg.module_loss != "auto" and cfg.batch_module == "none":
        raise ValueError(f"module_loss={cfg.module_loss!r} chooses the batch module's half of the loss: the baseline "
                         "has no module half; leave module_loss at auto or pass a batch_module")
    if cfg.embed_dim > MAX_EMBED_DIM:
        raise ValueError(f"embed_dim={cfg.embed_dim} is larger than {MAX_EMBED_DIM:,}: the papers embed in 128-512 "
                         f"dimensions, and the head and the proxies grow with it ({cfg.embed_dim:,} floats per image "
                         "and per proxy); pass e.g. --embed_dim 512")
    low, high, why = _image_size_bounds(cfg)
    if not low <= cfg.image_size <= high:
        raise ValueError(f"image_size={cfg.image_size} must be in [{low}, {high}]: {why}")
    if cfg.resize and not cfg.image_size <= cfg.resize <= 2 * MAX_IMAGE_SIZE:
        raise ValueError(f"resize={cfg.resize} must be 0 (image_size x 8/7) or in [image_size, {2 * MAX_IMAGE_SIZE}] "
                         f"= [{cfg.image_size}, {2 * MAX_IMAGE_SIZE}]: the evaluation resizes the shorter side, then "
                         "crops image_size; pass e.g. --resize 0")
    if cfg.dataset == "fake-cub" and not (cfg.fake_classes <= 200 and cfg.fake_per_class <= 60):
        raise ValueError(f"fake_classes={cfg.fake_classes}, fake_per_class={cfg.fake_per_class}: the synthetic "
                         "archive mimics CUB's 200 classes of about 60 images, so at most 200 and 60 (it is written "
                         "to disk); pass e.g. --fake_classes 20 --fake_per_class 8")
    if cfg.glyph_per_class > 1000:
        raise ValueError(f"glyph_per_class={cfg.glyph_per_class} is larger than 1000: every image is rendered and "
                         "kept in memory (CUB has about 60 per class); pass e.g. --glyph_per_class 60")
    if cfg.batch_module != "none":
        check_module_kwargs(cfg.batch_module, cfg.module_kwargs)
    elif not isinstance(cfg.module_kwargs, dict):
        check_module_kwargs("none", cfg.module_kwargs)
    from .resources import check_resources

    check_resources(cfg)                 # memory sized from the config, before anything is allocated


def _file_in_the_way(path: Path) -> Path | None:
    """``path`` or the first of its parents that exists as something other than a folder, else ``None``."""
    for p in (path, *path.parents):
        if _exists(p):
            return None if p.is_dir() else p
    return None


def _exists(path: Path) -> bool:
    """``path`` exists (a broken link too); ``False`` for a name the system cannot even look up (too long)."""
    try:
        return path.exists() or path.is_symlink()
    except OSError:
        return False


def path_problem(path: str | Path, writable: bool = False) -> str | None:
    """Why nothing could be written at the folder ``path``, or ``None``: it is (or lies under) a file, a
    name in it is longer than the file system allows, or (``writable``) its nearest existing folder is
    read-only. A phrase to follow the folder's name in a message."""
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        return "is a file" if blocker == path else f"lies under {blocker}, which is a file"
    existing = next((p for p in (path, *path.parents) if _exists(p)), Path("."))
    try:
        name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):       # no pathconf (Windows) or no limit reported
        name_max, path_max = 255, 4096
    long = next((part for part in path.parts if len(part.encode()) > name_max), None)
    if long is not None:
        return f"has a name of {len(long.encode())} bytes ({long[:20]}...), more than the file system's {name_max}"
    if len(str(path.absolute()).encode()) > path_max - 300:         # room for the run's own file names
        return f"is a path of {len(str(path.absolute()))} characters, too long for the file system ({path_max})"
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: {existing} is read-only"
    return None


def check_paths(cfg: Any) -> None:
    """Raise ``ValueError`` when the run folder (``out``) or the data folder (``data_root``) could not be
    written (:func:`path_problem`): a file in the way, a name too long, a read-only run folder."""
    for option, path, what in (("--out (--runs for the experiments)", Path(cfg.run_dir), "the run folder"),
                               ("--data_root", Path(cfg.data_root), "the data folder")):
        problem = path_problem(path, writable=what == "the run folder")
        if problem is not None:
            raise ValueError(f"{what} {path} {problem}; choose another {option} (a folder, created if missing)")
