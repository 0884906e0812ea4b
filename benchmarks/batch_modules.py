"""Cost of the batch modules at B=120, D=512 (forward + backward) against a naive implementation
with Python loops over samples and heads, interleaved over several rounds (see ``_common.py``),
plus the memory each keeps for backward (bytes of the tensors autograd saves: device-independent).

The modules' share of a real training step (where they run on ResNet-50's 2048-d features and
AdamW updates their parameters) is measured by ``step_time.py``.

    .venv/bin/python benchmarks/batch_modules.py [--batch 120] [--dim 512] [--rounds 3]

On a CPU shared with other busy processes, run it with ``--threads 1`` (see ``_common.py``):
with two threads the modules' many small operators can spend longer waiting for each other
than computing.
"""
import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from naive import naive_batchformer_layer, naive_bgformer  # noqa: E402  (loop references shared with the tests)
from _common import add_args, header, interleaved, print_table, set_threads  # noqa: E402

from bgtutorial import BatchFormer  # noqa: E402
from bgtutorial.bgformer import BGFormer  # noqa: E402


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while running ``fn``."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=120)
    p.add_argument("--dim", type=int, default=512)
    add_args(p, rounds=3)
    a = p.parse_args()
    set_threads(a.threads)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")   # naive.py's float()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randn(a.batch, a.dim, device=dev, requires_grad=True)   # (B, D)
    y = torch.arange(a.batch, device=dev) // 4                        # m = 4 samples per class
    bf = BatchFormer(a.dim, dropout=0.0).to(dev).eval()
    bg = BGFormer(a.dim, dropout=0.0).to(dev).eval()

    def step(fn):
        def run():
            fn().float().sum().backward()
        return run

    BF, BG = "BatchFormer (einops + SDPA)", f"BGFormer (graph + layer, k = {bg.blocks[0].k})"
    ours = {BF: lambda: bf(x), BG: lambda: bg(x, y)}
    naive = {BF: lambda: naive_batchformer_layer(bf.layers[0], x),
             BG: lambda: naive_bgformer(bg, x, y)}
    contenders = {}
    for name in ours:
        contenders[name] = step(ours[name])
        contenders[f"{name.split()[0]} naive loop"] = step(naive[name])

    header(f"batch modules, B={a.batch}, D={a.dim}, forward+backward", a.rounds, a.warmup)
    t = interleaved(contenders, a.rounds, a.warmup)
    speed_up = {name: f"{t[f'{name.split()[0]} naive loop'].median / t[name].median:.0f}x" for name in ours}
    memory = {name: f"{saved_bytes(fn) / 2**20:.1f} MiB" for name, fn in ours.items()}
    print_table(t, BF, unit="ms", label="module", extra={"naive / ours (medians)": speed_up,
                                                        "saved for backward": memory})


if __name__ == "__main__":
    main()
