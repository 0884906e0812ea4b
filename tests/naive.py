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
    out = torch.zeros(B, D, dtype=q.dtype, device=q.device)
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
    ln1, ln2 = layer.norm1, layer.norm2
    x = naive_layer_norm(x + naive_linear(att, layer.proj), ln1.weight, ln1.bias, ln1.eps)             # post-norm
    hidden = torch.clamp(naive_linear(x, layer.ffn1), min=0)                                            # ReLU
    return naive_layer_norm(x + naive_linear(hidden, layer.ffn2), ln2.weight, ln2.bias, ln2.eps)


def naive_knn(xn, k, include_self=True):
    """Neighbour lists: the node itself first, then the k-1 most similar others (ties by index);
    without ``include_self``, the k most similar of all B, the node itself competing like the others."""
    B = xn.shape[0]
    out = []
    for i in range(B):
        if not include_self:
            ranked = sorted(range(B), key=lambda j: (-float((xn[i] @ xn[j]).detach()), j))
            out.append(sorted(ranked[: min(k, B)]))
            continue
        others = sorted((j for j in range(B) if j != i), key=lambda j: (-float((xn[i] @ xn[j]).detach()), j))
        out.append(sorted([i] + others[: max(0, min(k, B) - 1)]))
    return out


def naive_topk_mha_rows(q, k, v, num_heads, top_k):
    """The authors' top-K attention, one head and one query at a time: (B, D) each -> (B, D), (H, B, B).

    Query i of head h scores every key j, keeps the ``min(top_k, B)`` largest scores (ties: the
    lower j), and takes the softmax over those only; itself is not forced in. Differentiable.
    """
    B, D = q.shape
    d = D // num_heads
    rows, weights = [], torch.zeros(num_heads, B, B, dtype=q.dtype, device=q.device)
    for i in range(B):
        heads = []
        for h in range(num_heads):
            sl = slice(h * d, (h + 1) * d)
            scores = [q[i, sl] @ k[j, sl] / math.sqrt(d) for j in range(B)]
            keep = sorted(range(B), key=lambda j: (-float(scores[j].detach()), j))[: min(top_k, B)]
            w = torch.softmax(torch.stack([scores[j] for j in keep]), 0)
            heads.append(sum(w[n] * v[j, sl] for n, j in enumerate(keep)))
            for n, j in enumerate(keep):
                weights[h, i, j] = w[n].detach()
        rows.append(torch.cat(heads))
    return torch.stack(rows), weights


def naive_normalized_label_graph(y):
    """D^-1/2 (Y + I) D^-1/2 entry by entry."""
    B = len(y)
    a = [[float(y[i] == y[j]) + float(i == j) for j in range(B)] for i in range(B)]
    deg = [sum(row) for row in a]
    return torch.tensor([[a[i][j] / math.sqrt(deg[i] * deg[j]) for j in range(B)] for i in range(B)],
                        device=getattr(y, "device", None))


def naive_layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm from its formula, row by row: (x - mean) / sqrt(biased var + eps) * weight + bias."""
    rows = []
    for r in x:
        mean = sum(r) / len(r)
        var = sum((r - mean) ** 2) / len(r)
        rows.append((r - mean) / torch.sqrt(var + eps) * weight + bias)
    return torch.stack(rows)


def naive_linear(x, layer):
    """x Wᵀ + b from a linear layer's parameters (its forward is not called)."""
    out = x @ layer.weight.T
    return out + layer.bias if layer.bias is not None else out


def naive_gelu(x):
    """GELU from its definition, x·Φ(x) with Φ the standard normal CDF."""
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def naive_minmax(xn, nbrs):
    """The min-max visual path: row i sums its neighbours' features, weighted by their similarity
    to i rescaled to [0, 1] over the row's neighbours (all 1 when they are equal)."""
    B, D = xn.shape
    out = []
    for i in range(B):
        s = torch.stack([xn[i] @ xn[j] for j in nbrs[i]])
        w = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else torch.ones_like(s)
        out.append(sum(w[n] * xn[j] for n, j in enumerate(nbrs[i])))
    return torch.stack(out)


def naive_bgformer_block(block, x, y):
    """One BGFormer block (eval mode) with loops and formulas; the block's parameters are read, its
    sub-layers are never called, so a change to any of them shows."""
    B, D = x.shape
    xn = naive_layer_norm(x, block.norm.weight, block.norm.bias, block.norm.eps)
    if block.graph_kind == "features":
        nbrs = naive_knn(xn, block.k, block.self_loops)
    if hasattr(block.visual, "qkv"):
        W, b = block.visual.qkv.weight, block.visual.qkv.bias
        q, k, v = (xn @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D] for i in range(3))
        if block.graph_kind == "logits":
            vis = naive_topk_mha_rows(q, k, v, block.visual.num_heads, block.k)[0]
        else:
            vis = naive_mha_rows(q, k, v, block.visual.num_heads, lambda i: nbrs[i])
    else:
        vis = naive_minmax(xn, nbrs)
    out = x + block.lam * naive_linear(vis, block.proj_visual[0])
    if block.lam < 1:
        a = naive_normalized_label_graph(y.tolist())
        xw = naive_linear(xn, block.semantic.weight)                  # X W (+ b with a tied projection)
        sem = torch.stack([sum(a[i, j] * xw[j] for j in range(B)) for i in range(B)])
        out = out + (1 - block.lam) * naive_linear(sem, block.proj_semantic[0])
    ln, fc1, fc2 = block.ffn[0], block.ffn[1], block.ffn[4]        # FFN = W2·GELU(W1·LN(x) + b1) + b2
    hidden = naive_gelu(naive_linear(naive_layer_norm(out, ln.weight, ln.bias, ln.eps), fc1))
    return out + naive_linear(hidden, fc2)


def naive_bgformer(module, x, y):
    for block in module.blocks:
        x = naive_bgformer_block(block, x, y)
    return x


def naive_retrieval(n, labels, ranked, ks=(1, 2, 4, 8)):
    """Recall@K for each K and MAP@R by loops, from ``ranked(i)``: the other samples, nearest first.

    Recall@K: share of queries with a sample of their class among their K nearest. MAP@R: for a query
    with R others of its class, (1/R) Σ_{rank ≤ R} precision@rank over the ranks that hold one, averaged
    over the queries with R > 0. Returns ``({K: recall}, map_at_r)``.
    """
    labels = [int(v) for v in labels]
    hits, aps = {k: 0 for k in ks}, []
    for i in range(n):
        order = ranked(i)
        for k in ks:
            hits[k] += any(labels[j] == labels[i] for j in order[:k])
        r = sum(labels[j] == labels[i] for j in range(n) if j != i)
        if r == 0:
            continue
        found, total = 0, 0.0
        for rank, j in enumerate(order[:r], 1):
            if labels[j] == labels[i]:
                found += 1
                total += found / rank
        aps.append(total / r)
    return {k: v / n for k, v in hits.items()}, (sum(aps) / len(aps) if aps else float("nan"))


def naive_poincare_ball(v, c=0.1, r=2.3):
    """A vector (list of floats) into the Poincaré ball of curvature -c: clipped to norm r (None: not
    clipped), then the exponential map at 0, tanh(√c|v|) v / (√c|v|)."""
    n = math.sqrt(sum(a * a for a in v))
    if r is not None and n > r:
        v, n = [a * r / n for a in v], r
    s = math.sqrt(c) * n
    return [a * math.tanh(s) / s for a in v]


def naive_poincare_distance(x, y, c=0.1):
    """The ball's distance in its arcosh form, arcosh(1 + 2c|x-y|² / ((1 - c|x|²)(1 - c|y|²))) / √c
    (the package computes the Möbius form)."""
    def sq(v):
        return sum(a * a for a in v)
    return math.acosh(1 + 2 * c * sq([a - b for a, b in zip(x, y)]) / ((1 - c * sq(x)) * (1 - c * sq(y)))) / math.sqrt(c)
