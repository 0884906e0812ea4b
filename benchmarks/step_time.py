"""Seconds per training step of RetrievalNet (forward, Proxy-Anchor loss, backward, AdamW) and the
share of it taken by each batch module, as ratios in one run.

    .venv/bin/python benchmarks/step_time.py [--backbone resnet50] [--batch 32] [--image 224]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_time, machine  # noqa: E402

from bgtutorial.losses import MetricLoss  # noqa: E402
from bgtutorial.models import RetrievalNet  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    imgs = torch.randn(a.batch, 3, a.image, a.image, device=dev)
    y = (torch.arange(a.batch, device=dev) // a.m)
    rows = []
    for module in ("none", "batchformer", "bgformer"):
        net = RetrievalNet(a.backbone, 512, pretrained=False, batch_module=module).to(dev).train()
        loss = MetricLoss("proxy_anchor", int(y.max()) + 1, 512).to(dev)
        opt = torch.optim.AdamW(list(net.parameters()) + list(loss.parameters()), 1e-4)

        def step():
            emb, yy = net(imgs, y)
            value = loss(emb, yy)
            opt.zero_grad()
            value.backward()
            opt.step()

        rows.append((module, best_time(step, a.repeat)))
    base = rows[0][1]
    print(f"training step, {a.backbone}, batch {a.batch}, {a.image}px, Proxy-Anchor, AdamW, float32")
    print(f"machine: {machine()}")
    print(f"| batch module | s/step | images/s | ratio to baseline step |")
    print("|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {a.batch / t:.1f} | {t / base:.3f} |")


if __name__ == "__main__":
    main()
