"""Run folders that know their config, and checkpoints that are safe to write and to read.

A run folder (``runs/<name>/``) holds:

* ``config.json``: the :class:`~bgtutorial.config.Config` it was trained with, written before
  the first step. Resuming, loading a finished history (``experiments.run_or_load``) or
  training again into the folder compares it with the config asked for; a difference in any
  field outside :data:`MUTABLE_FIELDS` raises :class:`ConfigMismatchError`, which names the
  fields and says what to do (another ``out``, or ``--force`` / ``force=True`` to start over).
* ``history.json`` (metrics per epoch, loss per step), ``last.pt`` (everything a resume
  needs) and, with ``val_classes``, ``best_val.pt`` (chosen on held-out training classes, never on
  the test classes). Checkpoints carry their config too, so a checkpoint copied from another run
  is refused on load. (``best.pt`` of older runs is still removed by ``force``.)

Writes are atomic (temporary file, then rename) and refuse non-finite tensors: a model whose
weights blew up is never saved; a write that fails (a full disk) leaves the previous file as it was
and raises :class:`CheckpointError` with the free space and the fix. Reads turn an empty or
truncated file into :class:`CheckpointError` with the path and the fix.

One run per folder: :func:`hold_run_dir` locks the folder (``.lock``, :func:`bgtutorial.utils.exclusive_lock`)
while a run trains into it, so a second run into the same folder stops at once with the holder named.
"""
from __future__ import annotations

import dataclasses
import contextlib
import json
import math
import os
import pickle
import shutil
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .utils import UserError, exclusive_lock

__all__ = ["CheckpointError", "ConfigMismatchError", "MUTABLE_FIELDS", "CONFIG_FILE", "HISTORY_FILE", "RUN_FILES",
           "atomic_save", "atomic_json", "load_checkpoint", "load_history", "config_dict", "config_diff",
           "stored_config", "check_config", "prepare_run_dir", "nonfinite_tensors", "first_nonfinite",
           "hold_run_dir", "LOCK_FILE", "restoring", "check_optimizer_state", "history_problem"]

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
#: the files a run writes into its folder (``--force`` removes exactly these)
RUN_FILES = (CONFIG_FILE, HISTORY_FILE, "last.pt", "best.pt", "best_val.pt")
#: config fields that may differ between a run and the config that resumes or loads it: they say
#: where files live or how fast the run goes, not what it learns. Every other field must match.
MUTABLE_FIELDS = frozenset({"preset", "out", "data_root", "device", "num_workers", "progress", "eval_batch_size", "eval_every",
                            "ckpt_every"})
_FORCE_HINT = "pass --force (force=True) to delete it and train again"
#: the lock a training run holds on its folder (removed when the run ends; never deleted by ``--force``)
LOCK_FILE = ".lock"


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
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as JSON through a temporary file and a rename (atomic on POSIX)."""
    path = Path(path)
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it to ``path``.

    A failed write (a full disk, a quota, no permission: ``OSError`` or torch's ``RuntimeError``)
    leaves ``path`` as it was and raises :class:`CheckpointError` naming the free space and the fix;
    ``path`` being a folder is refused before anything is written.
    """
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, where the run keeps a file; move it away (mv {path} "
                              f"{path}.old) and run again")
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)          # atomic on POSIX
    except (OSError, RuntimeError) as err:
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there"
        except OSError:
            free = "its free space unknown"
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        reason = getattr(err, "strerror", None) or f"the write failed: {str(err).splitlines()[0][:120]}"
        raise CheckpointError(f"could not write {path} ({reason}; {free}); {kept}. Free some space (or make the "
                              "folder writable), then continue with --resume (resume=True)") from None
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
    resume = (f"delete it and train again with --resume (resume=True; last.pt holds the history up to its "
              f"epoch, without --resume the run starts over), or {_FORCE_HINT}")
    try:
        history = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is truncated or not JSON ({err.__class__.__name__}); {resume}") from err
    problem = history_problem(history)
    if problem:
        raise CheckpointError(f"{path} is not a bgtutorial history ({problem}); {resume}")
    return history


def history_problem(history: Any) -> str | None:
    """What is wrong with the shape of a parsed history, or ``None``: a dict with a config dict, a list of
    epoch records (dicts numbered 1, 2, ... with finite numeric values, or null for a metric with nothing to
    score, such as an empty Many/Medium/Few group of glyphs-lt), optional lists of steps."""
    if not isinstance(history, dict) or not {"config", "epochs"} <= history.keys():
        return "no 'config'/'epochs'"
    if not isinstance(history["config"], dict):
        return f"'config' is a {type(history['config']).__name__}, not an object"
    epochs = history["epochs"]
    if not isinstance(epochs, list):
        return f"'epochs' is a {type(epochs).__name__}, not a list"
    for i, record in enumerate(epochs, 1):
        if not isinstance(record, dict) or record.get("epoch") != i:
            return f"epoch record {i} is not an object with \"epoch\": {i}"
        record = {k: v for k, v in record.items() if k != "val" and v is not None}
        bad = [k for k, v in record.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            return f"epoch record {i} holds non-numbers under {', '.join(map(repr, bad[:3]))}"
        bad = [k for k, v in record.items() if not math.isfinite(v)]
        if bad:
            return f"epoch record {i} holds NaN or inf under {', '.join(map(repr, bad[:3]))}"
    if not isinstance(history.get("steps", []), list):
        return "'steps' is not a list"
    return None


def _detail(err: BaseException) -> str:
    """The informative line of an exception, shortened: for ``load_state_dict``'s multi-line report,
    its first mismatch ("size mismatch for head.weight: ...", "Missing key(s) ...")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    text = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
    if isinstance(err, KeyError):
        text = f"no entry {text}"
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def restoring(path: str | Path, fix: str = "") -> Iterator[None]:
    """Turn an error while putting a checkpoint's contents in place (a missing entry, a tensor of
    another shape, a value of the wrong type) into one :class:`CheckpointError` naming ``path``.

    ``fix`` replaces the default advice (delete it and train again without ``--resume``, or ``--force``).
    """
    try:
        yield
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        fix = fix or f"delete it and train again without --resume, or {_FORCE_HINT}"
        raise CheckpointError(f"checkpoint {path} does not fit this run ({_detail(err)}); {fix}") from err


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Raise ``ValueError`` when a loaded optimizer state holds a tensor whose shape is not its parameter's
    (``load_state_dict`` does not check; the first step would fail)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    raise ValueError(f"optimizer state {key!r} has shape {tuple(value.shape)}, its parameter "
                                     f"{tuple(p.shape)}")


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
    for name in RUN_FILES:
        if (run_dir / name).is_dir():
            raise CheckpointError(f"{run_dir / name} is a folder, where a run keeps a file: move it away "
                                  f"(mv {run_dir / name} {run_dir / name}.old) or train into another folder (--out DIR)")
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


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Create ``run_dir`` if needed and lock it (``run_dir/.lock``) for the ``with`` block; yield it.

    One run per folder: while a run holds the lock, a second run into the folder (``--force``
    included) raises :class:`~bgtutorial.utils.LockedError` naming the holder, before it has read
    or deleted anything. The lock dies with its process (a killed run leaves no stale lock); the
    folders this call created (the run folder and any missing parent) are removed again when nothing
    was written into them.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"the run folder {run_dir} is a file, not a folder: choose another --out (out=...)")
    created = []                       # the folders this call makes, deepest first
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            break
        created.append(folder)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the run folder {run_dir} ({err.strerror or err}): choose another "
                        "--out (out=...) in a folder you can write") from None
    try:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(exclusive_lock(
                    run_dir / LOCK_FILE, wait=False, what=f"the run folder {run_dir}",
                    hint="wait for that run to finish (or stop it), or train into another folder (--out DIR)"))
            except PermissionError as err:
                raise UserError(f"cannot write into the run folder {run_dir} ({err.strerror}): make it writable "
                                f"(chmod u+w {run_dir}) or choose another --out") from None
            yield run_dir
    finally:
        for folder in created:         # only when empty: a run that failed before writing leaves no folder
            try:
                folder.rmdir()
            except OSError:
                break
