"""``make demo``: train the baseline and print Recall@K before/after training.

On a machine with a CUDA GPU and CUB-200-2011 in ``data/CUB_200_2011`` it runs the
``cub-resnet50`` preset; otherwise the embedded glyphs default on the CPU: about 200 rendered
characters in CUB's protocol (half of them unseen), rendered once into ``data/`` in seconds,
fine-tuning the shipped glyph-pretrained backbone for about 2.5 minutes on 2 idle cores (docs/results.md). ``--preset digits`` is the one-minute run.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from .cli import format_table  # noqa: E402
from .config import load_config  # noqa: E402
from .data.splits import build_datasets  # noqa: E402
from .experiments import embed_run  # noqa: E402
from .plots.curves import plot_history  # noqa: E402
from .plots.retrieval import embedding_projection  # noqa: E402
from .train import train  # noqa: E402
from .utils import CLI_ERRORS, error_line  # noqa: E402


#: classes drawn in the demo's projection: a legend can name 10, a cloud of 102 colours shows nothing
SHOWN_CLASSES = 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bgtutorial.demo", description=__doc__, allow_abbrev=False)
    p.add_argument("--preset", default=None, help="force a preset (default: cub-resnet50 when possible, else glyphs)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--force", action="store_true", help="retrain even if --out holds a run of another config")
    args = p.parse_args(argv)
    try:
        return _demo(args)
    except CLI_ERRORS as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: `make demo` trains from the start again; python -m bgtutorial.train --preset "
              f"{args.preset or 'glyphs'} --out {args.out} --resume continues the run in {args.out}", file=sys.stderr)
        return 130


def _demo(args: argparse.Namespace) -> int:
    cub_here = (Path("data") / "CUB_200_2011" / "images.txt").is_file()
    preset = args.preset or ("cub-resnet50" if cub_here and torch.cuda.is_available() else "glyphs")
    overrides = {"out": args.out}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    cfg = load_config(preset, **overrides)
    train_ds, test_ds = build_datasets(cfg)
    print(f"preset {preset} on {'CUDA' if torch.cuda.is_available() else 'CPU'}"
          + ("" if preset.startswith("cub") else " (no CUB-200-2011 in data/ or no GPU: the embedded default)"))
    for name, ds in (("train", train_ds), ("test", test_ds)):
        counts = Counter(ds.targets)
        print(f"  {name:5s}: {len(ds):5d} images, {len(counts):3d} classes "
              f"({min(counts.values())}-{max(counts.values())} per class), classes {ds.classes[0]} ... {ds.classes[-1]}")
    print("  protocol: train on the first half of the classes, Recall@K on the unseen second half")
    history = train(cfg, force=args.force)
    keys = ("R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI")
    print(format_table({"untrained": {k: history["initial"][k] for k in keys},
                        "trained": {k: history["epochs"][-1][k] for k in keys}}))
    run = cfg.run_dir
    plot_history(history).savefig(run / "curves.png", dpi=110)
    emb, y, test_ds = embed_run(run)    # the test-time network of the last epoch (no test-set selection)
    shown = torch.linspace(0, int(y.max()), min(SHOWN_CLASSES, int(y.max()) + 1)).round().long()   # evenly spaced
    keep = torch.isin(y, shown)
    names = getattr(test_ds, "classes", None)
    embedding_projection(emb[keep], torch.searchsorted(shown, y[keep]),              # labels 0..9: one legend entry each
                         names=None if names is None else [names[int(c)] for c in shown],
                         title=f"{len(shown)} of the {int(y.max()) + 1} unseen classes: test embeddings (PCA)").savefig(
        run / "projection.png", dpi=110)
    print(f"plots: {run / 'curves.png'}, {run / 'projection.png'}; history: {run / 'history.json'}; "
          f"checkpoint: {run / 'last.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
