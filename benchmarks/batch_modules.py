"""Cost of the batch modules at B=120, D=512 (forward + backward), as ratios measured in one run:
(i) against a naive implementation with Python loops over samples and heads, and
(ii) against one ResNet-50 training step on the same batch (224 px), plus the memory each
keeps for backward (bytes of the tensors autograd saves: device-independent).

    .venv/bin/python benchmarks/batch_modules.py [--batch 120] [--dim 512] [--image 224]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from naive import naive_batchformer_layer, naive_bgformer  # noqa: E402  (loop references shared with the tests)
from _common import best_time, machine  # noqa: E402

from bgtutorial import BatchFormer  # noqa: E402
from bgtutorial.bgformer import BGFormer  # noqa: E402
from bgtutorial.models import RetrievalNet  # noqa: E402


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
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randn(a.batch, a.dim, device=dev, requires_grad=True)

    modules = {"BatchFormer (einops + SDPA)": BatchFormer(a.dim, dropout=0.0).to(dev).eval()}
    naive = {"BatchFormer (einops + SDPA)": lambda m, x: naive_batchformer_layer(m.layers[0], x)}
    y = torch.arange(a.batch, device=dev) // 4               # m = 4 samples per class
    modules["BGFormer (graph + layer)"] = BGFormer(a.dim, dropout=0.0).to(dev).eval()
    naive["BGFormer (graph + layer)"] = lambda m, x: naive_bgformer(m, x.cpu(), y.cpu())

    def step(fn):
        def run():
            out = fn()
            out.float().sum().backward()
        return run

    net = RetrievalNet("resnet50", 512, pretrained=False).to(dev).train()
    imgs = torch.randn(a.batch, 3, a.image, a.image, device=dev)
    t_backbone = best_time(step(lambda: net(imgs)), repeat=max(1, a.repeat - 1))
    mem_backbone = saved_bytes(lambda: net(imgs))

    print(f"batch modules, B={a.batch}, D={a.dim}, forward+backward; ResNet-50 step at {a.image}px")
    print(f"machine: {machine()}")
    print(f"| {'module':28s} | {'ms':>8s} | {'naive loop ms':>13s} | {'speed-up vs naive':>17s} | "
          f"{'share of ResNet-50 step':>23s} | {'saved for backward':>18s} |")
    print("|" + "|".join("-" * (w + 2) for w in (28, 8, 13, 17, 23, 18)) + "|")
    for name, m in modules.items():
        call = (lambda m=m: m(x, y)) if "BGFormer" in name else (lambda m=m: m(x))
        t = best_time(step(call), a.repeat)
        t_naive = best_time(step(lambda m=m, name=name: naive[name](m, x)), repeat=1)
        mem = saved_bytes(call)
        print(f"| {name:28s} | {t * 1e3:8.2f} | {t_naive * 1e3:13.1f} | {t_naive / t:16.1f}x | "
              f"{t / t_backbone:22.2e}x | {mem / 2**20:15.1f} MiB |")
    print(f"| {'ResNet-50 training step':28s} | {t_backbone * 1e3:8.1f} | {'':13s} | {'':17s} | {1:22.4f}x | "
          f"{mem_backbone / 2**20:15.1f} MiB |")


if __name__ == "__main__":
    main()
