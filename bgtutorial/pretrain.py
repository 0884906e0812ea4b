"""Pretrain the glyph backbone: ``python -m bgtutorial.pretrain`` (``--publish``: into the package).

Both papers start from a backbone pretrained on ImageNet and fine-tune it on CUB's training
species. The CPU default does the same on its own data: :class:`~bgtutorial.models.SmallCNN`
learns to classify the characters of the pretraining corpus
(:func:`bgtutorial.data.corpus.pretraining_characters`: 641 characters, none of them a retrieval
class, part of one, a look-alike of one, one plus a stroke or named after one), rendered with the retrieval set's
nuisances, with a linear classifier and cross-entropy. The classifier is thrown away; the
backbone's weights are written as ``<out>/glyph-smallcnn.pt`` (``runs/pretrain/`` by default) with a
JSON beside them (sha256, the characters, this command, its time and machine, the held-out top-1
accuracy); ``--publish`` writes them into the package instead, ``bgtutorial/weights/``, where
``pretrained = true`` on the ``smallcnn`` backbone loads them (:func:`bgtutorial.models.build_backbone`).

Nothing is overwritten by a command that fails: every argument is checked before the corpus is
rendered; the weights and the JSON are written under temporary names and renamed together, only
when every weight is finite; a checkpoint in ``--work`` of other settings, or one that cannot be
(epoch 99 of 2, a damaged file), is refused with one line naming it.

Every image is a pure function of (character, seed); of ``per_class`` renderings of a character,
the last ``heldout`` are never trained on and give the top-1 accuracy. Nothing here looks at the
retrieval classes. An interrupted run resumes from ``<work>/last.pt`` at the epoch it reached.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, atomic_save, first_nonfinite, load_checkpoint, restoring
from .config_checks import MAX_SEED, path_problem
from .data.corpus import build_corpus, pretraining_characters
from .models import GLYPH_WEIGHTS, SmallCNN
from .utils import CLI_ERRORS, UserError, bars_disabled, error_line, seed_everything

__all__ = ["pretrain", "shift_crop", "check_arguments", "DEFAULT_OUT"]

#: where the weights go unless ``--publish`` ships them into the package (``bgtutorial/weights/``)
DEFAULT_OUT = "runs/pretrain"


def shift_crop(images: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """The fine-tuning augmentation, batched: pad by ``pad`` px (edge values) and crop back at a random
    offset per image, as ``RandomCrop(size, padding=pad, padding_mode="edge")``. (B, C, H, W) -> same."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=g)
    rows = rearrange(torch.arange(h), "h -> 1 h 1") + rearrange(dy, "b -> b 1 1")          # (B, H, 1)
    cols = rearrange(torch.arange(w), "w -> 1 1 w") + rearrange(dx, "b -> b 1 1")          # (B, 1, W)
    batch = rearrange(torch.arange(b), "b -> b 1 1")
    return rearrange(rearrange(padded, "b c h w -> b h w c")[batch, rows, cols], "b h w c -> b c h w")


@torch.no_grad()
def _top1(net: nn.Module, head: nn.Linear, images: torch.Tensor, labels: torch.Tensor, batch: int = 1024) -> float:
    net.eval()
    hits = 0
    for i in range(0, len(images), batch):
        logits = head(net(images[i:i + batch].float() / 255.0))
        hits += int((logits.argmax(1) == labels[i:i + batch]).sum())
    return hits / len(images)


def check_arguments(out: str | Path, work: str | Path, epochs: int, per_class: int, heldout: int, batch_size: int,
                    lr: float, weight_decay: float, label_smoothing: float, seed: int, data_root: str | Path,
                    classes: int | None = None) -> None:
    """Raise ``ValueError`` naming the option at fault, before anything is rendered, trained or written:
    counts below their minimum, a rate out of its bounds, a seed NumPy cannot take, a folder that could
    not be written (a file in the way, a name too long, read-only; ``classes`` bounds ``batch_size``)."""
    for name, value, low in (("epochs", epochs, 1), ("per_class", per_class, 2), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"--{name} {value} must be an integer >= {low}; e.g. --{name} {max(low, 8)}")
    if isinstance(heldout, bool) or not isinstance(heldout, int) or not 0 < heldout < per_class:
        raise ValueError(f"--heldout {heldout}: heldout must be in (0, per_class={per_class}): the renderings of "
                         f"a class kept out of training for the top-1 accuracy; e.g. --heldout {max(1, per_class // 5)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed {seed} is out of range: a seed is an integer in [0, 2**32 - 1]; e.g. --seed 0")
    for name, value, low, high, why in (
            ("lr", lr, 0.0, 1.0, "AdamW's step size: 0 learns nothing, above 1 the weights diverge"),
            ("weight_decay", weight_decay, 0.0, 1.0, "AdamW's decoupled decay per unit of lr"),
            ("label_smoothing", label_smoothing, 0.0, 1.0, "a share of the target mass")):
        inside = low < value <= high if name == "lr" else low <= value < high
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not inside:
            bounds = f"({low:g}, {high:g}]" if name == "lr" else f"[{low:g}, {high:g})"
            raise ValueError(f"--{name} {value} must be in {bounds}: {why}")
    if classes is not None:
        from .resources import check_allocation

        check_allocation(f"the corpus images ({classes} classes x {per_class:,} renderings x 3 x 32 x 32 bytes)",
                         classes * per_class * 3 * 32 * 32, "pass e.g. --per_class 40")
    if classes is not None and batch_size > classes * (per_class - heldout):
        raise ValueError(f"--batch_size {batch_size} is larger than the training set ({classes} classes x "
                         f"{per_class - heldout} renderings): no batch would be drawn; lower --batch_size")
    for option, path, writable in (("--out", out, True), ("--work", work, True), ("--data_root", data_root, False)):
        problem = path_problem(path, writable)
        if problem is not None:
            raise ValueError(f"{option} {path} {problem}; choose another {option} (a folder, created if missing)")


def _resume(ckpt: Path, args: dict, net: nn.Module, head: nn.Linear, opt, sched) -> tuple[int, list, float]:
    """``(epochs done, history, seconds)`` of the run in ``ckpt``, its states loaded; ``(0, [], 0.0)`` when
    there is none. A checkpoint of other settings, or one no run of these settings could have written
    (epoch 99 of 2, a damaged file, NaN weights), raises one line naming it: nothing is overwritten."""
    if not ckpt.exists():
        return 0, [], 0.0
    fix = f"delete it (rm {ckpt}) to start over, or choose another --work"
    if not ckpt.is_file():
        raise UserError(f"{ckpt} is not a file, where the pretraining checkpoint belongs: move it away or choose "
                        "another --work")
    try:
        state = load_checkpoint(ckpt)
    except CheckpointError:
        raise CheckpointError(f"the pretraining checkpoint {ckpt} is empty, truncated or not a checkpoint: {fix}") from None
    saved = state.get("args")
    if saved != args:
        differ = [k for k in args if not isinstance(saved, dict) or saved.get(k) != args[k]] or ["its keys"]
        raise UserError(f"{ckpt} holds a pretraining run of other settings ({', '.join(differ[:4])} differ): {fix}")
    epoch, history = state.get("epoch"), state.get("history")
    if not (type(epoch) is int and 0 < epoch <= args["epochs"] and isinstance(history, list) and len(history) == epoch):
        records = len(history) if isinstance(history, list) else "no"
        raise CheckpointError(f"{ckpt} claims epoch {epoch!r} of {args['epochs']} with {records} epoch records, which "
                              f"no run of these settings writes: {fix}")
    with restoring(ckpt, fix):
        net.load_state_dict(state["net"]), head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"])
        seconds = float(state["seconds"])
    bad = first_nonfinite([*net.named_parameters(), *head.named_parameters()])
    if bad is not None:
        raise CheckpointError(f"{ckpt} holds NaN or inf in {bad}: {fix}")
    print(f"resuming {ckpt} after epoch {epoch}")
    return epoch, history, seconds


def _write_together(out: Path, state: dict[str, torch.Tensor], meta: dict) -> dict:
    """Write ``state`` as ``out/glyph-smallcnn.pt`` and ``{"sha256": ..., **meta}`` as its JSON, both under
    temporary names first and renamed one after the other (the weights put back when the JSON's rename
    fails); refuse non-finite weights. Returns the JSON written."""
    weights = out / GLYPH_WEIGHTS.name
    bad = first_nonfinite(list(state.items()))
    if bad is not None:
        raise FloatingPointError(f"refusing to write {weights}: the weight {bad} holds NaN or inf (the run "
                                 "diverged); lower --lr and run again with another --work")
    meta_path = weights.with_suffix(".json")
    for path in (weights, meta_path):
        if path.is_dir():
            raise UserError(f"{path} is a folder, where a file goes: move it away or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_m = (out / f".{p.name}.tmp{os.getpid()}" for p in (weights, meta_path))
    old = weights.read_bytes() if weights.is_file() else None
    try:
        torch.save(state, tmp_w)
        meta = {"sha256": hashlib.sha256(tmp_w.read_bytes()).hexdigest(), **meta}
        tmp_m.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp_w, weights)
        try:
            os.replace(tmp_m, meta_path)
        except OSError:
            weights.unlink() if old is None else weights.write_bytes(old)
            raise
    except (OSError, RuntimeError) as err:
        raise UserError(f"could not write {weights} and its JSON ({getattr(err, 'strerror', None) or err}); the "
                        f"files in {out} are as they were: free some space or choose another --out") from None
    finally:
        tmp_w.unlink(missing_ok=True), tmp_m.unlink(missing_ok=True)
    return meta


def pretrain(out: str | Path = DEFAULT_OUT, work: str | Path = "runs/pretrain", epochs: int = 12,
             per_class: int = 40, heldout: int = 8, batch_size: int = 128, lr: float = 2e-3,
             weight_decay: float = 5e-4, label_smoothing: float = 0.0, seed: int = 0, data_root: str = "data",
             progress: bool = True, command: str = "") -> dict:
    """Train SmallCNN + a linear classifier on the corpus; write ``glyph-smallcnn.pt`` and its JSON to ``out``.

    AdamW with a cosine schedule (per step) over ``epochs``, cross-entropy with label smoothing,
    the fine-tuning augmentation (:func:`shift_crop`, 2 px). Returns the JSON written. The arguments
    are checked first (:func:`check_arguments`); a non-finite loss stops the run at once.
    """
    check_arguments(out, work, epochs, per_class, heldout, batch_size, lr, weight_decay, label_smoothing, seed,
                    data_root)
    chars = list(pretraining_characters())
    check_arguments(out, work, epochs, per_class, heldout, batch_size, lr, weight_decay, label_smoothing, seed,
                    data_root, classes=len(chars))
    t0 = time.perf_counter()
    data = torch.load(build_corpus(chars, data_root, per_class, seed=0, progress=progress), weights_only=True)
    within = torch.arange(len(data["labels"])) % per_class              # rendering index inside its class
    train_x, train_y = data["images"][within < per_class - heldout], data["labels"][within < per_class - heldout]
    test_x, test_y = data["images"][within >= per_class - heldout], data["labels"][within >= per_class - heldout]
    seed_everything(seed)
    net, head = SmallCNN(), nn.Linear(SmallCNN().out_dim, len(chars))
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * (len(train_x) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + torch.cos(torch.tensor(s / steps * torch.pi)).item()))
    args = {"epochs": epochs, "per_class": per_class, "heldout": heldout, "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay, "label_smoothing": label_smoothing, "seed": seed, "characters": "".join(chars)}
    ckpt = Path(work) / "last.pt"
    start, history, spent = _resume(ckpt, args, net, head, opt, sched)
    g = torch.Generator().manual_seed(seed)
    for _ in range(start):                       # the data order of the epochs already done
        torch.randperm(len(train_x), generator=g), torch.randint(0, 5, (2, len(train_x)), generator=g)
    for epoch in range(start, epochs):
        net.train()
        order = torch.randperm(len(train_x), generator=g)
        crops = shift_crop(train_x, 2, g)       # one draw of offsets per epoch, uint8 kept until the batch
        total, seen = 0.0, 0
        bar = tqdm(range(len(train_x) // batch_size), desc=f"pretrain epoch {epoch + 1}/{epochs}",
                   disable=bars_disabled(progress), leave=False)
        for i in bar:
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(head(net(crops[idx].float() / 255.0)), train_y[idx], label_smoothing=label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the pretraining loss became {loss.item()} in epoch {epoch + 1}, batch "
                                         f"{i + 1}: the run diverged; lower --lr (e.g. --lr 2e-3); nothing was written")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        top1 = _top1(net, head, test_x, test_y)
        history.append({"epoch": epoch + 1, "loss": round(total / seen, 4), "heldout_top1": round(top1, 4)})
        print(f"epoch {epoch + 1}/{epochs}: loss {total / seen:.3f}, held-out top-1 {top1:.3f}", flush=True)
        Path(work).mkdir(parents=True, exist_ok=True)
        atomic_save({"args": args, "net": net.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                     "sched": sched.state_dict(), "epoch": epoch + 1, "history": history,
                     "seconds": spent + time.perf_counter() - t0, "rng": torch.get_rng_state()}, ckpt)
    meta = {"characters": chars, "command": command or "python -m bgtutorial.pretrain",
            "seconds": round(spent + time.perf_counter() - t0),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
                       f"torch {torch.__version__}, {'CUDA' if torch.cuda.is_available() else 'CPU'}",
            "heldout_top1": history[-1]["heldout_top1"], "classes": len(chars), "images_per_class": per_class,
            "heldout_per_class": heldout, "backbone": "smallcnn", "args": {k: v for k, v in args.items() if k != "characters"},
            "history": history}
    return _write_together(Path(out), {k: v.clone() for k, v in net.state_dict().items()}, meta)


def _interrupted(ckpt: Path, command: str) -> str:
    """The one line Ctrl-C prints: where ``ckpt`` stands and the command that resumes it."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        done = f"holds epoch {int(state['epoch'])} of {int(state['args']['epochs'])}"
    except Exception:              # no checkpoint yet, or one being written when Ctrl-C came
        return f"interrupted before {ckpt} held a finished epoch: nothing to resume; run the same command to start over"
    return f"interrupted: {ckpt} {done}; resume it with the same command: {command}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bgtutorial.pretrain", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--out", default=None, help=f"where glyph-smallcnn.pt and its .json go (default: {DEFAULT_OUT}/)")
    p.add_argument("--publish", action="store_true",
                   help=f"write them into the package instead ({GLYPH_WEIGHTS.parent}), replacing the shipped "
                        "weights that pretrained=true loads")
    p.add_argument("--work", default="runs/pretrain", help="checkpoint folder (resumed when it holds this run)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--per_class", type=int, default=40)
    p.add_argument("--heldout", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_root", default="data")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    command = " ".join(["python -m bgtutorial.pretrain", shlex.join(argv if argv is not None else sys.argv[1:])]).strip()
    if a.publish and a.out is not None:
        print("error: --publish writes into the package's weights folder: drop --out (or --publish)", file=sys.stderr)
        return 2
    if a.out is not None and Path(a.out).resolve() == GLYPH_WEIGHTS.parent.resolve():
        print(f"error: --out {a.out} is the package's weights folder: pass --publish to replace the shipped weights",
              file=sys.stderr)
        return 2
    out = GLYPH_WEIGHTS.parent if a.publish else Path(a.out or DEFAULT_OUT)
    try:
        meta = pretrain(out, a.work, a.epochs, a.per_class, a.heldout, a.batch_size, lr=a.lr, seed=a.seed,
                        data_root=a.data_root, command=command)
    except (*CLI_ERRORS, OSError) as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(Path(a.work) / "last.pt", command), file=sys.stderr)
        return 130
    print(f"wrote {out / GLYPH_WEIGHTS.name}: {meta['classes']} classes, held-out top-1 "
          f"{meta['heldout_top1']:.3f}, {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
