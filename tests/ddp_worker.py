"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Each rank holds a slice of a global batch, gathers it (differentiably) and runs BatchFormer
and BGFormer on the global batch; it saves its local output and the gradient of a global
loss with respect to its local features, for the parent test to compare with one process.
"""
import sys

import torch

from bgtutorial import BatchFormer
from bgtutorial.bgformer import BGFormer
from bgtutorial.distributed import GatherBatch, setup, teardown

rank, world, _ = setup()
B, D = 6, 16
g = torch.Generator().manual_seed(0)
x_all = torch.randn(world * B, D, generator=g)
y_all = torch.arange(world * B) // 3
torch.manual_seed(0)
modules = {"batchformer": BatchFormer(D, dropout=0.0).eval(), "bgformer": BGFormer(D, num_heads=4, k=4).eval()}
out = {}
for name, module in modules.items():
    local = x_all[rank * B:(rank + 1) * B].clone().requires_grad_(True)
    feats, labels = GatherBatch()(local, y_all[rank * B:(rank + 1) * B])
    assert torch.equal(labels, y_all)
    res = module(feats) if name == "batchformer" else module(feats, labels)
    (res * torch.linspace(-1, 1, res.numel()).view_as(res)).sum().backward()   # the same global loss on every rank
    out[name] = {"output": res[rank * B:(rank + 1) * B].detach(), "grad": local.grad}
torch.save(out, f"{sys.argv[1]}/rank{rank}.pt")
teardown()
