"""Small helpers shared by the package and the notebooks: device choice, seeds, smoke mode, file locks."""
from __future__ import annotations

import contextlib
import datetime
import errno
import os
import platform
import random
import re
import shlex
import socket
import stat
import sys
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

__all__ = ["device", "seed_everything", "smoke_mode", "autocast_dtype", "bars_disabled", "UserError", "CLI_ERRORS",
           "about", "check_gpu_memory", "LockedError", "exclusive_lock", "error_line", "run_cli", "STUDY_INTERRUPTED"]


class UserError(Exception):
    """An error caused by an input (file, folder, option), whose one-line message says what to do.

    The command-line entry points print such messages (and those of :data:`CLI_ERRORS`) without a
    traceback and exit with code 2.
    """


class LockedError(UserError):
    """Another process holds the lock on a folder (a run folder, the CUB extraction); the message names it."""


#: the exceptions the CLIs turn into ``error: <message>`` on stderr and exit code 2
CLI_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError, PermissionError,
                                               FloatingPointError)


#: what a study CLI prints on Ctrl-C: its runs are resumable
STUDY_INTERRUPTED = ("interrupted: run the same command again (without --force): finished runs are loaded, the "
                     "interrupted one resumes from its last.pt")


def run_cli(body, interrupted: str = STUDY_INTERRUPTED) -> int:
    """Run a CLI's ``body()`` (returns an exit code): an error of :data:`CLI_ERRORS` prints ``error: <one line>``
    and gives 2, Ctrl-C prints ``interrupted`` and gives 130."""
    try:
        return body()
    except CLI_ERRORS as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def error_line(err: BaseException) -> str:
    """The one line the CLIs print after ``error:`` for ``err``.

    An error re-raised by a DataLoader worker carries the worker's whole traceback in its message
    ("Caught CUBDataError in DataLoader worker process 0. Original Traceback ..."): only the original
    message is kept. Line breaks and runs of spaces become single spaces.
    """
    text = str(err)
    if "Original Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = re.sub(r"^[A-Za-z_][\w.]*: ", "", lines[-1].strip()) if lines else type(err).__name__
    return " ".join(text.split()) or type(err).__name__


def device(prefer: str | None = None) -> torch.device:
    """The device to compute on: CUDA when present, else CPU (nothing assumes CUDA).

    ``prefer`` ("cpu", "cuda", "cuda:1", "mps") overrides the choice; a device that is not
    there (no CUDA, ``cuda:3`` on a one-GPU machine, a misspelt name) raises ``ValueError``
    with the devices to choose from, instead of failing later.
    """
    if not prefer:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    choices = "'cpu'" + (f", 'cuda' or 'cuda:0' to 'cuda:{n_cuda - 1}'" if n_cuda else "")
    try:
        dev = torch.device(prefer)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {prefer!r}; choose {choices}") from err
    if dev.type == "cuda" and (n_cuda == 0 or (dev.index or 0) >= n_cuda):
        have = f"{n_cuda} CUDA device(s)" if n_cuda else "no CUDA device"
        raise ValueError(f"device {prefer!r} does not exist: this machine has {have}; choose {choices}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {prefer!r} (Apple MPS) is not available here; choose {choices}")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {prefer!r} cannot train a model here; choose {choices}")
    return dev


def autocast_dtype(dev: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision="auto"`` on ``dev``: bf16 on CUDA GPUs of compute
    capability 8.0 and above, fp16 below, none (float32) on the CPU (:mod:`bgtutorial.precision`)."""
    from .precision import resolve_precision

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[resolve_precision("auto", dev)]


def describe_device(dev: torch.device) -> str:
    """The machine a run trains on, in words, for its history: ``"cuda:0 (NVIDIA H200)"`` or
    ``"cpu (x86_64, 2 cores, 1 torch thread)"``."""
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    return f"{dev.type} ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


#: the values of ``BGT_SMOKE`` that ask for smoke mode, and those that ask for the full run
SMOKE_ON, SMOKE_OFF = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def smoke_mode() -> bool:
    """True when the environment variable ``BGT_SMOKE`` asks for tiny, fast runs (CI sets ``BGT_SMOKE=1``).

    The one parser of ``BGT_SMOKE``, for the package and the notebooks' parameters cells alike:
    1/true/yes/on (any case) mean smoke mode, 0/false/no/off or unset the full run; anything else
    raises ``ValueError`` instead of silently picking one.
    """
    value = os.environ.get("BGT_SMOKE", "").strip().lower()
    if value not in SMOKE_ON + SMOKE_OFF:
        raise ValueError(f"BGT_SMOKE={os.environ['BGT_SMOKE']!r} is neither on ({'/'.join(SMOKE_ON)}) nor off "
                         f"({'/'.join(SMOKE_OFF[1:])} or unset); set BGT_SMOKE=1 for the smoke run or unset it")
    return value in SMOKE_ON


def bars_disabled(progress: bool = True) -> bool:
    """True when progress bars should be hidden: ``progress=False`` or ``TQDM_DISABLE=1`` (CI)."""
    return not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes")


def about(dev: torch.device | None = None) -> str:
    """One line naming what a notebook ran on: package and torch versions, device, threads, date.

    The notebooks print it first, so a committed output says where its numbers come from.
    """
    import datetime
    import platform

    from . import __version__

    dev = dev or device()
    where = (f"{torch.cuda.get_device_name(dev)}" if dev.type == "cuda"
             else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")
    return (f"bgtutorial {__version__} · torch {torch.__version__} · {dev.type}: {where} · "
            f"{datetime.date.today().isoformat()}")


def check_gpu_memory(required_gib: float, what: str, total_gib: float | None = None, hint: str = "",
                     device_index: int = 0) -> bool:
    """True when the GPU has at least ``required_gib`` GiB of memory for ``what``; else print why not and
    what to change, and return False.

    ``total_gib``: the card's memory; ``None`` reads it from ``torch.cuda.get_device_properties``
    (no CUDA device: False). The message names the three knobs: a smaller ``batch_size``, a 16-bit
    ``precision``, or skipping the run (``RUN_TIER2=False`` in notebook 05); ``hint`` is appended
    (e.g. the largest batch that fits by :func:`bgtutorial.gpucheck.estimate_train_gib`).
    """
    if required_gib <= 0:
        raise ValueError(f"required_gib must be > 0, got {required_gib}")
    name = "the GPU"
    if total_gib is None:
        if not torch.cuda.is_available():
            print(f"{what} needs a CUDA GPU with about {required_gib:.1f} GiB of memory, and there is none here: "
                  "skipped (set RUN_TIER2=False to skip it without this message)." + (f" {hint}" if hint else ""))
            return False
        props = torch.cuda.get_device_properties(device_index)
        total_gib, name = props.total_memory / 2**30, props.name
    if total_gib >= required_gib:
        print(f"{what}: needs about {required_gib:.1f} GiB, {name} has {total_gib:.1f} GiB: it fits.")
        return True
    print(f"{what} needs about {required_gib:.1f} GiB of GPU memory, {name} has {total_gib:.1f} GiB: not started. "
          "Lower batch_size (in multiples of m; keep steps_per_epoch x batch_size about the same), use "
          "precision='bf16' or 'fp16' if it is fp32, or set RUN_TIER2=False to skip it." + (f" {hint}" if hint else ""))
    return False


def _holder() -> str:
    """Who holds a lock: this process's id, command line (shortened), host and start time."""
    command = " ".join(shlex.join(getattr(sys, "orig_argv", sys.argv)).split())      # one line
    command = command if len(command) <= 160 else command[:157] + "..."
    return (f"process {os.getpid()} ({command}) on {socket.gethostname()}, "
            f"since {datetime.datetime.now().isoformat(timespec='seconds')}")


def _open_lock_file(path: Path, what: str):
    """Open (or create) the lock file ``path`` for reading and writing, never through a symbolic link and
    only when it is a regular file: anything else at ``path`` (a link, a folder, a pipe) raises
    :class:`UserError` naming it, and nothing is written."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    fix = f"it is not {what or 'the folder'}'s lock file; move it away (mv {path} {path}.old) and run again"
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link, where a lock file belongs: {fix}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | nofollow | getattr(os, "O_NONBLOCK", 0), 0o644)
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, where a lock file belongs: {fix}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link, where a lock file belongs: {fix}") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file, where a lock file belongs: {fix}")
    return os.fdopen(fd, "r+")


@contextlib.contextmanager
def exclusive_lock(path: str | Path, wait: bool = True, what: str = "", hint: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (POSIX ``flock``) for the ``with`` block.

    The file records its holder (process id, command line, host, start time) and is removed on
    release; the kernel drops the lock when its process dies, so a killed holder never leaves a
    stale lock behind. ``wait=True`` waits for the holder to finish (processes started together,
    e.g. torchrun's ranks extracting CUB once); ``wait=False`` raises :class:`LockedError` at once,
    "``what`` is in use by <holder>; ``hint``". Only a regular file is a lock: a symbolic link, a
    folder or a pipe at ``path`` raises :class:`UserError`, and nothing is written through it
    (:func:`_open_lock_file`). Without ``fcntl`` (Windows), or on a file system
    that refuses locks (a warning says so), nothing is locked.
    """
    try:
        import fcntl
    except ImportError:           # Windows: no advisory locks, one process at a time is up to the user
        yield
        return
    path = Path(path)
    while True:
        handle = _open_lock_file(path, what)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process (starting up)"
            handle.close()
            raise LockedError(f"{what or path} is in use by {holder}; {hint or 'wait for it to finish'}") from None
        except OSError as err:    # a file system without locks (some network and FUSE mounts)
            handle.close()
            path.unlink(missing_ok=True)
            warnings.warn(f"cannot lock {path} on this file system ({err.strerror}): one process at a time "
                          f"{'in ' + what if what else 'there'} is up to you", stacklevel=3)
            yield
            return
        try:                      # the previous holder may have removed the file between our open and flock
            mine, there = os.fstat(handle.fileno()), os.stat(path)
            if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(_holder() + "\n")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()         # while still locked: a waiting process then finds another file and retries
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
