"""Seconds per training step of RetrievalNet (forward, Proxy-Anchor loss, backward, AdamW) with no
batch module, BatchFormer and BGFormer, interleaved over several rounds (see ``_common.py``), and
the work each module adds, timed on its own next to the step's round-to-round spread.

The module sits between the pooled backbone features (B, F) and the embedding head, and doubles
the batch the head and the loss see. Its cost is therefore measured on the *tail* of the step:
from given features (B, F) through [module] -> head -> loss -> backward -> AdamW (which then
updates only the head, module and loss parameters). "Added" is the tail's median with the
module minus the tail's median without it; it is compared with the whole step's median and with
the spread (max - min) of the baseline step over the rounds.

    .venv/bin/python benchmarks/step_time.py [--backbone resnet50] [--batch 32] [--image 224] [--rounds 5]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_args, header, interleaved, print_table, set_threads  # noqa: E402

from bgtutorial.losses import MetricLoss  # noqa: E402
from bgtutorial.models import RetrievalNet  # noqa: E402

MODULES = ("none", "batchformer", "bgformer")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--image", type=int, default=224)
    add_args(p, rounds=5)
    p.add_argument("--tail_rounds", type=int, default=30)
    a = p.parse_args()
    set_threads(a.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    imgs = torch.randn(a.batch, 3, a.image, a.image, device=dev)
    y = torch.arange(a.batch, device=dev) // a.m                      # m samples per class
    parts = {}
    for module in MODULES:
        net = RetrievalNet(a.backbone, 512, pretrained=False, batch_module=module).to(dev).train()
        loss = MetricLoss("proxy_anchor", int(y.max()) + 1, 512).to(dev)
        opt = torch.optim.AdamW(list(net.parameters()) + list(loss.parameters()), 1e-4)
        parts[module] = (net, loss, opt)
    feats = torch.randn(a.batch, parts["none"][0].feat_dim, device=dev, requires_grad=True)   # (B, F)

    def step(module: str):
        net, loss, opt = parts[module]

        def run():
            emb, yy = net(imgs, y)                                   # (B or 2B, 512)
            value = loss(emb, yy)
            opt.zero_grad()
            value.backward()
            opt.step()
        return run

    def tail(module: str, update: bool):
        net, loss, opt = parts[module]

        def run():
            f, yy = (feats, y) if net.batch_module is None else net.batch_module.augment(feats, y)
            value = loss(net.embed(f), yy)
            opt.zero_grad()                      # grads set to None: AdamW then skips the backbone
            value.backward()
            if update:
                opt.step()
        return run

    header(f"training step, {a.backbone}, batch {a.batch}, {a.image}px, Proxy-Anchor, AdamW, float32",
           a.rounds, a.warmup)
    steps = interleaved({m: step(m) for m in MODULES}, a.rounds, a.warmup)
    print_table(steps, "none", unit="s", label="batch module",
                extra={"images/s (median)": {m: f"{a.batch / t.median:.1f}" for m, t in steps.items()}})

    tails = interleaved({f"{m}{suffix}": tail(m, update) for suffix, update in ((" fwd+bwd", False), (" + AdamW", True))
                         for m in MODULES}, a.tail_rounds, a.warmup)
    base_step = steps["none"]
    spread = base_step.max - base_step.min
    print(f"\nthe step's tail alone: features (B, {feats.shape[1]}) -> [module] -> head -> loss -> backward "
          f"[-> AdamW], {a.tail_rounds} interleaved rounds; the baseline step's median is {base_step.median * 1e3:.0f} ms "
          f"and its spread (max - min over {a.rounds} rounds) {spread * 1e3:.0f} ms")
    added = {name: t.median - tails[name.replace(name.split()[0], "none", 1)].median for name, t in tails.items()}
    params = {m: sum(p.numel() for p in parts[m][0].batch_module.parameters()) if m != "none" else 0 for m in MODULES}
    print_table(tails, "none fwd+bwd", unit="ms", label="tail", extra={
        "module parameters": {name: f"{params[name.split()[0]] / 1e6:.1f} M" for name in tails},
        "added ms (median)": {name: f"{v * 1e3:.1f}" for name, v in added.items()},
        "added / step median": {name: f"{v / base_step.median:.1%}" for name, v in added.items()},
        "added / step spread": {name: f"{v / spread:.2f}" for name, v in added.items()}})

if __name__ == "__main__":
    main()
