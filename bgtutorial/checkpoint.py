"""Run folders that know their config, and checkpoints that are safe to write and to read.

A run folder (``runs/<name>/``) holds:

* ``config.json``: the :class:`~bgtutorial.train.Config` it was trained with, written before
  the first step. Resuming, loading a finished history (``experiments.run_or_load``) or
  training again into the folder compares it with the config asked for; a difference in any
  field outside :data:`MUTABLE_FIELDS` raises :class:`ConfigMismatchError`, which names the
  fields and says what to do (another ``out``, or ``--force`` / ``force=True`` to start over).
* ``history.json`` (metrics per epoch, loss per step), ``last.pt`` (everything a resume
  needs) and, with ``val_classes``, ``best_val.pt`` (chosen on held-out training classes, never on
  the test classes). Checkpoints carry their config too, so a checkpoint copied from another run
  is refused on load. (``best.pt`` of older runs is still removed by ``force``.)

Writes are atomic (temporary file, then rename) and refuse non-finite tensors: a model whose
weights blew up is never saved. Reads turn an empty or truncated file into
:class:`CheckpointError` with the path and the fix.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .utils import UserError

__all__ = ["CheckpointError", "ConfigMismatchError", "MUTABLE_FIELDS", "CONFIG_FILE", "HISTORY_FILE", "RUN_FILES",
           "atomic_save", "atomic_json", "load_checkpoint", "load_history", "config_dict", "config_diff",
           "stored_config", "check_config", "prepare_run_dir", "nonfinite_tensors", "first_nonfinite"]

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
#: the files a run writes into its folder (``--force`` removes exactly these)
RUN_FILES = (CONFIG_FILE, HISTORY_FILE, "last.pt", "best.pt", "best_val.pt")
#: config fields that may differ between a run and the config that resumes or loads it: they say
#: where files live or how fast the run goes, not what it learns. Every other field must match.
MUTABLE_FIELDS = frozenset({"preset", "out", "data_root", "device", "num_workers", "progress", "eval_batch_size", "eval_every",
                            "ckpt_every"})
_FORCE_HINT = "pass --force (force=True) to delete it and train again"


class CheckpointError(UserError, ValueError):
    """A checkpoint or history file that cannot be read (empty, truncated, not ours)."""


class ConfigMismatchError(UserError, ValueError):
    """A run folder or checkpoint holds a run of another config; ``fields`` maps name -> (stored, asked)."""

    def __init__(self, message: str, fields: Mapping[str, tuple[Any, Any]]) -> None:
        super().__init__(message)
        self.fields = dict(fields)


# ------------------------------------------------------------------------------ finiteness
def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating-point tensors in ``obj`` holding NaN or ±inf.

    ``obj`` may nest dicts, lists and tuples (a ``state_dict``, an optimizer state, a checkpoint).
    """
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            return [] if bool(torch.isfinite(obj).all()) else [prefix or "tensor"]
        return []
    items: Iterable[tuple[Any, Any]]
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    out: list[str] = []
    for key, value in items:
        out += nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor with a NaN or ±inf among ``(name, tensor)`` pairs, else ``None``.

    One device synchronisation for all tensors (cheap enough to run after every optimizer step).
    """
    named = [(n, t) for n, t in named if t.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in named])   # (P,) bool
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0, 0])][0]


# ---------------------------------------------------------------------------------- writes
def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a reader sees the old or the new file, never half.

    Refuses (``FloatingPointError``, nothing written) an object holding a non-finite tensor.
    """
    path = Path(path)
    bad = nonfinite_tensors(obj)
    if bad:
        raise FloatingPointError(f"refusing to save {path}: {len(bad)} tensor(s) hold NaN or inf, e.g. {bad[0]}; "
                                 "the run diverged: lower lr and train again with --force")
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)          # atomic on POSIX
    finally:
        tmp.unlink(missing_ok=True)


def atomic_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as JSON through a temporary file and a rename (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- reads
def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    config: Any = None) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``).

    Raises ``FileNotFoundError`` when it is missing, :class:`CheckpointError` when it is empty or
    truncated, and :class:`ConfigMismatchError` when ``config`` (a ``Config``) is given and the
    checkpoint was written by a run of another config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first (python -m bgtutorial.train ...)")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        size = path.stat().st_size
        what = "is empty" if size == 0 else f"is truncated or not a checkpoint ({size} bytes)"
        raise CheckpointError(f"checkpoint {path} {what}; delete it and train again "
                              f"(or {_FORCE_HINT})") from err
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path} holds a {type(ck).__name__}, not a bgtutorial checkpoint; "
                              f"delete it and train again (or {_FORCE_HINT})")
    if config is not None and "config" in ck:
        try:
            saved = json.loads(ck["config"])
        except (TypeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"checkpoint {path} carries an unreadable config; delete it and train again "
                                  f"(or {_FORCE_HINT})") from err
        check_config(saved, config, f"checkpoint {path}")
    return ck


def load_history(path: str | Path) -> dict[str, Any]:
    """Read a run's ``history.json``; :class:`CheckpointError` when it is truncated or not a history."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no history at {path}; train first (python -m bgtutorial.train ...)")
    try:
        history = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is truncated or not JSON ({err.__class__.__name__}); delete it "
                              f"(training again resumes from last.pt) or {_FORCE_HINT}") from err
    if not isinstance(history, dict) or not {"config", "epochs"} <= history.keys():
        raise CheckpointError(f"{path} is not a bgtutorial history (no 'config'/'epochs'); delete it "
                              f"or {_FORCE_HINT}")
    return history


# -------------------------------------------------------------------------- config checks
def _plain(value: Any) -> Any:
    """The JSON form of a value (tuples become lists), so stored and live configs compare equal."""
    return json.loads(json.dumps(value))


def config_dict(cfg: Any) -> dict[str, Any]:
    """A ``Config`` as the plain dict stored in ``config.json`` and in checkpoints."""
    return _plain(dataclasses.asdict(cfg))


def config_diff(saved: Mapping[str, Any], cfg: Any) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored, asked)}`` for every field outside :data:`MUTABLE_FIELDS` that differs.

    A field the stored config lacks (written before the field existed) counts as its default;
    a stored field the current ``Config`` no longer has is ignored.
    """
    diff = {}
    for f in dataclasses.fields(cfg):
        if f.name in MUTABLE_FIELDS:
            continue
        asked = _plain(getattr(cfg, f.name))
        if f.name in saved:
            stored = _plain(saved[f.name])
        elif f.default is not dataclasses.MISSING:
            stored = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            stored = _plain(f.default_factory())
        else:
            continue
        if stored != asked:
            diff[f.name] = (stored, asked)
    return diff


def check_config(saved: Mapping[str, Any], cfg: Any, where: str) -> None:
    """Raise :class:`ConfigMismatchError` naming the differing fields when ``saved`` is another config."""
    diff = config_diff(saved, cfg)
    if diff:
        listed = "; ".join(f"{k}: {json.dumps(a)} there, {json.dumps(b)} asked" for k, (a, b) in diff.items())
        raise ConfigMismatchError(
            f"{where} belongs to a run of another config ({listed}); train into a new folder "
            f"(--out DIR, out=...) or {_FORCE_HINT}", diff)


def stored_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The config a run folder was trained with (``config.json``, else the history's), or ``None``."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} is truncated or not JSON; delete it or {_FORCE_HINT}") from err
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path} is not a config; delete it or {_FORCE_HINT}")
        return saved
    if (run_dir / HISTORY_FILE).is_file():
        return load_history(run_dir / HISTORY_FILE)["config"]
    if (run_dir / "last.pt").is_file():
        ck = load_checkpoint(run_dir / "last.pt")
        return json.loads(ck["config"]) if "config" in ck else None
    return None


def prepare_run_dir(run_dir: str | Path, cfg: Any, force: bool = False, write: bool = True) -> None:
    """Make ``run_dir`` ready for ``cfg``: refuse a folder holding another config, record this one.

    ``force`` deletes the folder's run files (:data:`RUN_FILES`, other files stay) instead of
    comparing. ``write=False`` checks only (the non-leading ranks of a distributed run).
    """
    run_dir = Path(run_dir)
    if force:
        if write:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
    else:
        saved = stored_config(run_dir)
        if saved is not None:
            check_config(saved, cfg, f"the run folder {run_dir}")
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_json(config_dict(cfg), run_dir / CONFIG_FILE)
