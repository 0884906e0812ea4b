"""Pretrain the glyph backbone: ``python -m bgtutorial.pretrain`` (the command that made the shipped weights).

Both papers start from a backbone pretrained on ImageNet and fine-tune it on CUB's training
species. The CPU default does the same on its own data: :class:`~bgtutorial.models.SmallCNN`
learns to classify the characters of the pretraining corpus
(:func:`bgtutorial.data.corpus.pretraining_characters`: about 1,250 characters, none of them a
retrieval class, part of one or a look-alike of one), rendered with the retrieval set's
nuisances, with a linear classifier and cross-entropy. The classifier is thrown away; the
backbone's weights ship as ``bgtutorial/weights/glyph-smallcnn.pt`` with a JSON beside them
(sha256, the characters, this command, its time and machine, the held-out top-1 accuracy), and
``pretrained = true`` on the ``smallcnn`` backbone loads them (:func:`bgtutorial.models.build_backbone`).

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

from .data.corpus import build_corpus, pretraining_characters
from .models import GLYPH_WEIGHTS, SmallCNN
from .utils import CLI_ERRORS, bars_disabled, seed_everything

__all__ = ["pretrain", "shift_crop"]


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


def pretrain(out: str | Path = GLYPH_WEIGHTS.parent, work: str | Path = "runs/pretrain", epochs: int = 12,
             per_class: int = 40, heldout: int = 8, batch_size: int = 128, lr: float = 2e-3,
             weight_decay: float = 5e-4, label_smoothing: float = 0.0, seed: int = 0, data_root: str = "data",
             progress: bool = True, command: str = "") -> dict:
    """Train SmallCNN + a linear classifier on the corpus; write ``glyph-smallcnn.pt`` and its JSON to ``out``.

    AdamW with a cosine schedule (per step) over ``epochs``, cross-entropy with label smoothing,
    the fine-tuning augmentation (:func:`shift_crop`, 2 px). Returns the JSON written.
    """
    if not 0 < heldout < per_class:
        raise ValueError(f"heldout must be in (0, per_class={per_class}), got {heldout}")
    t0 = time.perf_counter()
    chars = list(pretraining_characters())
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
    work = Path(work)
    args = {"epochs": epochs, "per_class": per_class, "heldout": heldout, "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay, "label_smoothing": label_smoothing, "seed": seed, "characters": "".join(chars)}
    start, history, spent = 0, [], 0.0
    ckpt = work / "last.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        if state["args"] == args:
            net.load_state_dict(state["net"]), head.load_state_dict(state["head"])
            opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
            start, history, spent = state["epoch"], state["history"], state["seconds"]
            torch.set_rng_state(state["rng"])
            print(f"resuming {ckpt} after epoch {start}")
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
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        top1 = _top1(net, head, test_x, test_y)
        history.append({"epoch": epoch + 1, "loss": round(total / seen, 4), "heldout_top1": round(top1, 4)})
        print(f"epoch {epoch + 1}/{epochs}: loss {total / seen:.3f}, held-out top-1 {top1:.3f}", flush=True)
        work.mkdir(parents=True, exist_ok=True)
        state = {"args": args, "net": net.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                 "sched": sched.state_dict(), "epoch": epoch + 1, "history": history,
                 "seconds": spent + time.perf_counter() - t0, "rng": torch.get_rng_state()}
        torch.save(state, ckpt.with_suffix(".tmp"))
        os.replace(ckpt.with_suffix(".tmp"), ckpt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / GLYPH_WEIGHTS.name
    torch.save({k: v.clone() for k, v in net.state_dict().items()}, weights)
    meta = {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "characters": chars,
            "command": command or "python -m bgtutorial.pretrain", "seconds": round(spent + time.perf_counter() - t0),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
                       f"torch {torch.__version__}, "
                       f"{'CUDA' if torch.cuda.is_available() else 'CPU'}",
            "heldout_top1": history[-1]["heldout_top1"], "classes": len(chars), "images_per_class": per_class,
            "heldout_per_class": heldout, "backbone": "smallcnn", "args": {k: v for k, v in args.items() if k != "characters"},
            "history": history}
    weights.with_suffix(".json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bgtutorial.pretrain", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--out", default=str(GLYPH_WEIGHTS.parent), help="where glyph-smallcnn.pt and .json go")
    p.add_argument("--work", default="runs/pretrain", help="checkpoint folder (resumed when it holds this run)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--per_class", type=int, default=40)
    p.add_argument("--heldout", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_root", default="data")
    a = p.parse_args(argv)
    try:
        meta = pretrain(a.out, a.work, a.epochs, a.per_class, a.heldout, lr=a.lr, seed=a.seed, data_root=a.data_root,
                        command=" ".join(["python -m bgtutorial.pretrain", shlex.join(argv if argv is not None else sys.argv[1:])]).strip())
    except CLI_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {Path(a.out) / GLYPH_WEIGHTS.name}: {meta['classes']} classes, held-out top-1 "
          f"{meta['heldout_top1']:.3f}, {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
