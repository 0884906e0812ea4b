"""What one study run costs, and how many runs an hour the study plan gets: a training epoch of the
``glyphs`` preset (BGFormer, the slowest method), a test evaluation with k-means NMI and one without,
interleaved over a few rounds (see ``_common.py``), then runs per hour per worker with the evaluation
schedule the studies used before (epoch 0, then every 2 epochs: 6 evaluations) and with the plan's
(epoch 0 and the last epoch only: 2), a ratio measured in one run.

    .venv/bin/python benchmarks/study_run_cost.py [--rounds 2] [--threads 1] [--method bgformer]
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_args, header, interleaved, print_table, set_threads  # noqa: E402

from bgtutorial.config import load_config  # noqa: E402
from bgtutorial.train import _eval_now, _set_up, _train_epoch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    add_args(p, rounds=2)
    p.add_argument("--method", default="bgformer", choices=("none", "batchformer", "bgformer"))
    a = p.parse_args()
    set_threads(a.threads)
    header("One study run on the glyphs preset: a training epoch against an evaluation", a.rounds, a.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("glyphs", batch_module=a.method, out=str(Path(tmp) / "run"), progress=False)
        run = _set_up(cfg, force=False)
        epoch = {"n": 1}

        def train_epoch() -> None:          # an epoch with the backbone training (epochs 2-10 of a run)
            _train_epoch(run, epoch["n"], 0)
            epoch["n"] = min(epoch["n"] + 1, cfg.epochs - 1)

        def evaluate_nmi() -> None:
            _eval_now(run, run.test_ds)

        def evaluate_no_nmi() -> None:
            run.cfg.eval_nmi = False
            try:
                _eval_now(run, run.test_ds)
            finally:
                run.cfg.eval_nmi = True

        t = interleaved({"training epoch": train_epoch, "evaluation (with NMI)": evaluate_nmi,
                         "evaluation (no NMI)": evaluate_no_nmi}, a.rounds, a.warmup)
    print_table(t, "training epoch", label=f"{a.method}, {cfg.epochs} epochs, batch {cfg.batch_size}")
    ep, ev = t["training epoch"].median, t["evaluation (with NMI)"].median
    before = cfg.epochs * ep + (1 + cfg.epochs // 2) * ev        # epoch 0, then every 2 epochs (eval_every = 2)
    after = cfg.epochs * ep + 2 * ev                              # epoch 0 and the last epoch (the plan)
    print()
    print("| evaluation schedule | evaluations | seconds per run (medians) | runs per hour per worker |")
    print("|---|---|---|---|")
    print(f"| every 2 epochs (before) | {1 + cfg.epochs // 2} | {before:.0f} | {3600 / before:.1f} |")
    print(f"| epoch 0 and the last (the plan) | 2 | {after:.0f} | {3600 / after:.1f} |")
    print(f"\nthe plan's schedule: {before / after:.2f}x the runs per hour "
          "(the first epoch, backbone frozen, is cheaper than these epochs: both are upper bounds)")


if __name__ == "__main__":
    main()
