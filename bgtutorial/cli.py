"""The training command line: ``python -m bgtutorial.train --preset glyphs [--field value ...] [--resume] [--force]``.

``python -m bgtutorial.train`` runs :func:`main` here: one option per :class:`~bgtutorial.config.Config`
field, then :func:`bgtutorial.train.train`, then the before/after table of the run. Every expected
failure (bad options, broken checkpoints, a full disk, data problems) ends with a one-line
``error: ...`` that says what to do and exit code 2; Ctrl-C prints where the last checkpoint stands
and the command that resumes it (:func:`interrupted_message`), exit code 130.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

import torch

from . import train as training
from .config import PRESETS, Config, load_config
from .utils import CLI_ERRORS, error_line

__all__ = ["main", "build_parser", "format_table", "interrupted_message"]


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bgtutorial.train", description=training.__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="glyphs", help=f"one of {', '.join(PRESETS)}, optionally + -batchformer/-bgformer")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt when it exists")
    p.add_argument("--force", action="store_true",
                   help="delete the run files in <out> (config, history, checkpoints) and train from scratch")
    for f in dataclasses.fields(Config):
        if f.name == "preset":
            continue
        kind = {bool: _parse_bool, int: int, float: float, str: str, dict: json.loads}[
            {"bool": bool, "int": int, "float": float, "str": str, "dict": dict}[f.type]]
        # torchrun's own parser takes "--m" for an abbreviation of its options: "--m_per_class" is the alias to use there
        names = [f"--{f.name}"] + (["--m_per_class"] if f.name == "m" else [])
        p.add_argument(*names, dest=f.name, type=kind, default=None,
                       help=argparse.SUPPRESS if f.name == "progress" else None)
    return p


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per name, one column per metric."""
    cols = list(next(iter(rows.values())).keys())
    w = {c: max(8, len(c) + 2) for c in cols}
    lines = [f"{'':<14}" + "".join(f"{c:>{w[c]}}" for c in cols)]
    for name, vals in rows.items():
        lines.append(f"{name:<14}" + "".join(f"{'-':>{w[c]}}" if vals[c] is None else f"{vals[c]:>{w[c]}.3f}" for c in cols))
    return "\n".join(lines)


def interrupted_message(run_dir: Path, command: Sequence[str]) -> str:
    """What to print when Ctrl-C stops a run: where its last checkpoint stands and how to continue.

    ``command`` is the interrupted command line; the advice drops its ``--force`` (which would
    delete the checkpoint) and adds ``--resume``.
    """
    import shlex

    last = Path(run_dir) / "last.pt"
    resume = shlex.join([*(a for a in command if a != "--force"), *([] if "--resume" in command else ["--resume"])])
    try:
        ck = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        epoch, batch, total = int(ck["epoch"]), int(ck["batch"]), json.loads(ck["config"])["epochs"]
    except Exception:           # no checkpoint yet, or one being written when Ctrl-C came
        return (f"interrupted before {last} held a checkpoint: nothing to resume; run the same command again "
                f"to start over")
    where = (f"after {epoch} of {total} epochs" if batch == 0 else
             f"in epoch {epoch + 1} of {total}, after {batch} batch{'es' if batch > 1 else ''}")
    return f"interrupted: {last} holds the run {where}; continue it with: {resume}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("preset", "resume", "force")}
    cfg = None
    try:
        cfg = load_config(args.preset, **overrides)
        if cfg.dataset == "cub" and not torch.cuda.is_available():
            print("warning: the CUB-200 presets are meant for a CUDA GPU; on this CPU it will be very slow",
                  file=sys.stderr)
        history = training.train(cfg, resume=args.resume, force=args.force)
    except CLI_ERRORS as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if cfg is None:
            print("interrupted", file=sys.stderr)
        else:
            command = ["python", "-m", "bgtutorial.train", *(sys.argv[1:] if argv is None else argv)]
            print(interrupted_message(cfg.run_dir, command), file=sys.stderr)
        return 130
    from .distributed import teardown, world

    rank = world()[0]
    teardown()
    if rank != 0:
        return 0
    keys = ("R@1", "R@2", "R@4", "R@8", "MAP@R") + (("NMI",) if cfg.eval_nmi else ())
    if cfg.classification:          # recognition: top-1 overall and per Many / Medium / Few group ("-": empty)
        keys = ("top1", "top1_many", "top1_medium", "top1_few")
    print(format_table({"before": {k: history["initial"][k] for k in keys},
                        "after": {k: history["epochs"][-1][k] for k in keys}}))
    print(f"run folder: {cfg.run_dir}")
    return 0
