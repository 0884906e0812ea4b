"""Naive references written with Python loops over samples and heads: slow, obvious, independent.

Used by the unit tests (equality) and by benchmarks/batch_modules.py (speed ratios).
"""
import math

import torch
import torch.nn.functional as F


def naive_mha_rows(q, k, v, num_heads, neighbours):
    """Multi-head attention, row by row: query i attends to the keys in ``neighbours(i)``."""
    B, D = q.shape
    d = D // num_heads
    out = torch.zeros(B, D, dtype=q.dtype)
    for i in range(B):
        js = neighbours(i)
        for h in range(num_heads):
            sl = slice(h * d, (h + 1) * d)
            scores = torch.stack([q[i, sl] @ k[j, sl] for j in js]) / math.sqrt(d)
            w = torch.softmax(scores, 0)
            out[i, sl] = sum(w[n] * v[j, sl] for n, j in enumerate(js))
    return out


def naive_batchformer_layer(layer, x):
    """BatchFormer's post-norm encoder layer (eval mode) with loops."""
    B, D = x.shape
    W, b = layer.qkv.weight, layer.qkv.bias
    q, k, v = (x @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D] for i in range(3))
    att = naive_mha_rows(q, k, v, layer.num_heads, lambda i: list(range(B)))
    x = layer.norm1(x + layer.proj(att))
    return layer.norm2(x + layer.ffn2(F.relu(layer.ffn1(x))))


def naive_knn(xn, k):
    """Neighbour lists: the node itself first, then the k-1 most similar others (ties by index)."""
    B = xn.shape[0]
    out = []
    for i in range(B):
        others = sorted((j for j in range(B) if j != i), key=lambda j: (-float(xn[i] @ xn[j]), j))
        out.append(sorted([i] + others[: max(0, min(k, B) - 1)]))
    return out


def naive_normalized_label_graph(y):
    """D^-1/2 (Y + I) D^-1/2 entry by entry."""
    B = len(y)
    a = [[float(y[i] == y[j]) + float(i == j) for j in range(B)] for i in range(B)]
    deg = [sum(row) for row in a]
    return torch.tensor([[a[i][j] / math.sqrt(deg[i] * deg[j]) for j in range(B)] for i in range(B)])


def naive_bgformer_block(block, x, y):
    """One BGFormer block (eval mode, visual="attention") with loops."""
    B, D = x.shape
    xn = block.norm(x)
    nbrs = naive_knn(xn, block.k)
    W, b = block.visual.qkv.weight, block.visual.qkv.bias
    q, k, v = (xn @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D] for i in range(3))
    vis = naive_mha_rows(q, k, v, block.visual.num_heads, lambda i: nbrs[i])
    out = x + block.lam * block.proj_visual(vis)
    if block.lam < 1:
        a = naive_normalized_label_graph(y.tolist())
        xw = block.semantic.weight(xn)
        sem = torch.stack([sum(a[i, j] * xw[j] for j in range(B)) for i in range(B)])
        out = out + (1 - block.lam) * block.proj_semantic(sem)
    return out + block.ffn(out)


def naive_bgformer(module, x, y):
    for block in module.blocks:
        x = naive_bgformer_block(block, x, y)
    return x
