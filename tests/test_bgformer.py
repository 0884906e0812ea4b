"""Batch graph and BGFormer against loop references, and their properties."""
import math

import pytest
import torch
from einops import einsum, rearrange

from bgtutorial import RetrievalNet
from bgtutorial.bgformer import BGFormer, BGFormerBlock, StructureConstrainedAttention, topk_attention_weights
from bgtutorial.graph import BatchGraph, normalize_adjacency, same_label_share, semantic_graph, visual_graph
from naive import (naive_bgformer, naive_knn, naive_layer_norm, naive_minmax, naive_mha_rows,
                   naive_normalized_label_graph, naive_topk_mha_rows)
from reference_sgformer2 import MinMaxBlock, minmax_model

D, H = 16, 4


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, D, generator=g), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4])


# ------------------------------------------------------------------------------------ graph
def test_visual_graph_matches_loops(xy):
    x, _ = xy
    for k in (1, 3, 5):
        adj = visual_graph(x, k)
        assert adj.sum(1).tolist() == [k] * 12 and adj.diagonal().all()
        assert [torch.nonzero(r).flatten().tolist() for r in adj] == naive_knn(x, k)


def test_visual_graph_without_forced_self_loops(xy):
    """SGFormer2's plain top-K: a node whose own similarity is not among its row's K largest drops out."""
    x, _ = xy
    xs = x * torch.linspace(0.3, 2.0, 12)[:, None]                  # unequal norms: S[i, i] is not always the largest
    for k in (1, 3, 5):
        adj = visual_graph(xs, k, include_self=False)
        assert adj.sum(1).tolist() == [k] * 12
        assert [torch.nonzero(r).flatten().tolist() for r in adj] == naive_knn(xs, k, include_self=False)
    small = torch.tensor([[0.1, 0.0], [1.0, 0.1], [0.0, 1.0]])       # S[0, 0] = 0.01 < S[0, 1] = 0.1
    assert visual_graph(small, 1, include_self=False)[0].tolist() == [False, True, False]
    assert visual_graph(small, 1)[0].tolist() == [True, False, False]
    assert visual_graph(xs, 12, include_self=False).all()


def test_visual_graph_k_at_least_batch_is_full(xy):
    x, _ = xy
    assert visual_graph(x, 12).all() and visual_graph(x, 100).all()
    with pytest.raises(ValueError, match="k must be >= 1"):
        visual_graph(x, 0)


def test_semantic_graph_and_normalisation(xy):
    _, y = xy
    s = semantic_graph(y)
    assert torch.equal(s, torch.tensor([[a == b for b in y.tolist()] for a in y.tolist()]))
    torch.testing.assert_close(normalize_adjacency(s), naive_normalized_label_graph(y.tolist()))
    a = normalize_adjacency(s)
    torch.testing.assert_close(a, a.T)
    assert a[11, 11] == pytest.approx(1.0)     # a class with one sample: propagation keeps the node itself


def test_normalize_adjacency_with_unequal_degrees():
    """Label graphs of m-per-class batches give equal degrees within a class, where D^-1/2 A D^-1/2
    and D^-1 A agree; a star with a tail does not: check each entry against the formula."""
    edges = [(0, 1), (0, 2), (0, 3), (3, 4)]
    a = torch.zeros(5, 5, dtype=torch.bool)
    for i, j in edges:
        a[i, j] = a[j, i] = True
    for loops in (True, False):
        m = [[float(a[i, j]) + float(loops and i == j) for j in range(5)] for i in range(5)]
        deg = [sum(row) for row in m]
        assert len(set(deg)) > 1
        ref = torch.tensor([[m[i][j] / math.sqrt(deg[i] * deg[j]) for j in range(5)] for i in range(5)])
        got = normalize_adjacency(a, add_self_loops=loops)
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(got, got.T)
        # sqrt(deg) is the eigenvector of eigenvalue 1 of the symmetric normalisation
        torch.testing.assert_close(got @ torch.tensor(deg).sqrt(), torch.tensor(deg).sqrt())


def test_batch_without_positive_pair():
    y = torch.arange(5)
    assert torch.equal(semantic_graph(y), torch.eye(5, dtype=torch.bool))
    torch.testing.assert_close(normalize_adjacency(semantic_graph(y)), torch.eye(5))
    with pytest.raises(ValueError, match="no positive pair.*MPerClassBatchSampler"):
        semantic_graph(y, require_positive=True)
    with pytest.raises(ValueError, match="no positive pair"):
        BGFormer(D, H)(torch.randn(5, D), y)
    out = BGFormer(D, H, require_positive_pairs=False).eval()(torch.randn(5, D), y)
    assert out.shape == (5, D)


def test_batch_graph_container(xy):
    x, y = xy
    g = BatchGraph.build(x, y, k=4)
    assert torch.equal(g.visual, visual_graph(x, 4)) and torch.equal(g.semantic, semantic_graph(y))
    torch.testing.assert_close(g.semantic_norm, naive_normalized_label_graph(y.tolist()))
    assert BatchGraph.build(x, None, k=4).semantic is None
    assert BatchGraph.build(None, y, k=4).visual is None
    with pytest.raises(ValueError, match="no fixed visual graph"):
        BatchGraph.build(None, y, k=4).density


def test_density_counts_edges_over_b_squared():
    # rows with 1, 2, 3 and 4 edges: 10 of 16 pairs, a share no single row has
    adj = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert BatchGraph(adj).density == pytest.approx(10 / 16)


def test_same_label_share():
    y = torch.tensor([0, 0, 1, 1])
    adj = torch.tensor([[1, 1, 1, 0],        # self left out: 1 same-class edge (0-1), 1 other (0-2)
                        [0, 1, 0, 0],        # only itself: no edge
                        [0, 0, 0, 1],        # same class
                        [1, 1, 0, 0]])       # two other-class edges
    assert float(same_label_share(adj.bool(), y)) == pytest.approx(2 / 5)
    heads = torch.stack([adj * 0.3, torch.eye(4) + torch.tensor([[0, 0.5, 0, 0]] * 4)])   # (2, B, B) weights
    torch.testing.assert_close(same_label_share(heads, y), torch.tensor([2 / 5, 1 / 3]))


# ------------------------------------------------------------- SSA, per-head top-K of the logits (default)
def test_topk_keeps_exactly_k_weights_per_row_and_head(xy):
    x, _ = xy
    ssa = StructureConstrainedAttention(D, H, k=3).eval()
    for k in (1, 3, 5, 12, 40):
        ssa.k = k
        with torch.no_grad():
            _, w = ssa(x, return_attention=True)                     # (H, B, B)
        assert w.shape == (H, 12, 12)
        assert ((w != 0).sum(-1) == min(k, 12)).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(H, 12))
    ssa.k = 3
    with torch.no_grad():
        kept = ssa(x, return_attention=True)[1] != 0
    assert not kept.diagonal(dim1=1, dim2=2).all()                   # self is not forced in
    assert any(not torch.equal(kept[0], kept[h]) for h in range(1, H))   # each head picks its own graph


def test_topk_attention_matches_brute_force(xy):
    x, _ = xy
    for k in (1, 3, 7):
        ssa = StructureConstrainedAttention(D, H, k=k).eval()
        W, b = ssa.qkv.weight, ssa.qkv.bias
        q, key, v = (x @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D] for i in range(3))
        ref, ref_w = naive_topk_mha_rows(q, key, v, H, k)
        with torch.no_grad():
            out, w = ssa(x, return_attention=True)
        torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)


def _heads_attention(q, key, v, k):
    """(B, D) q, k, v -> (B, D) through topk_attention_weights, heads split with einops."""
    qh, kh, vh = (rearrange(t, "b (h d) -> h b d", h=H) for t in (q, key, v))
    w = topk_attention_weights(einsum(qh, kh, "h i d, h j d -> h i j") * (D // H) ** -0.5, k)
    return rearrange(einsum(w, vh, "h i j, h j d -> h i d"), "h b d -> b (h d)"), w


def test_gradients_reach_q_and_k_through_the_kept_logits_only(xy):
    x, _ = xy
    g = torch.Generator().manual_seed(2)
    q, key, v = (torch.randn(12, D, generator=g).requires_grad_(True) for _ in range(3))
    r = torch.randn(12, D, generator=g)
    out, w = _heads_attention(q, key, v, 3)
    (out * r).sum().backward()
    grads = [t.grad.clone() for t in (q, key, v)]
    for t in (q, key, v):
        t.grad = None
    (naive_topk_mha_rows(q, key, v, H, 3)[0] * r).sum().backward()
    for got, t in zip(grads, (q, key, v)):
        torch.testing.assert_close(got, t.grad, rtol=1e-4, atol=1e-6)
    assert (grads[0] != 0).all()                                      # every query learns from its kept logits
    d = D // H
    picked = (w != 0).any(1)                                          # (H, B): key j kept by some query of head h
    assert (~picked).any() and picked.any()
    for h in range(H):
        for j in range(12):
            kg = grads[1][j, h * d:(h + 1) * d]
            assert (kg.abs().sum() > 0) == bool(picked[h, j]), (h, j)   # unkept keys get no gradient

    logits = torch.randn(H, 12, 12, generator=g, requires_grad=True)
    wl = topk_attention_weights(logits, 4)
    (wl * torch.randn(H, 12, 12, generator=g)).sum().backward()
    assert (logits.grad[wl == 0] == 0).all() and (logits.grad[wl != 0] != 0).all()


def test_topk_ties_go_to_the_lower_index():
    logits = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0, 2.0],
                           [3.0, 3.0, 3.0, 3.0, 3.0, 3.0]])
    w = topk_attention_weights(logits, 2)
    assert torch.nonzero(w[0]).flatten().tolist() == [1, 2]
    assert torch.nonzero(w[1]).flatten().tolist() == [0, 1]
    torch.testing.assert_close(w[1, :2], torch.tensor([0.5, 0.5]))
    big = torch.zeros(3, 64, 64)                                      # a whole row of ties, any kernel size
    assert torch.equal(torch.nonzero(topk_attention_weights(big, 5)[2, 7]).flatten(), torch.arange(5))
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_attention_weights(logits, 0)


def test_topk_dropout_only_drops_kept_weights():
    logits = torch.randn(4, 12, 12, generator=torch.Generator().manual_seed(3))
    ref = topk_attention_weights(logits, 5)
    torch.manual_seed(0)
    w = topk_attention_weights(logits, 5, dropout_p=0.5, training=True)
    assert ((w != 0) <= (ref != 0)).all() and (w == 0).sum() > (ref == 0).sum()
    torch.testing.assert_close(w[w != 0], ref[w != 0] / 0.5)
    assert torch.equal(topk_attention_weights(logits, 5, dropout_p=0.5, training=False), ref)


def test_topk_under_a_float32_softmax_policy(monkeypatch):
    """CUDA autocast runs softmax in float32 on bf16/fp16 logits; the scatter must follow the
    weights' dtype (this broke BGFormer's first bf16 step on an H200, not reproducible under CPU
    autocast, whose softmax keeps the input dtype)."""
    logits = torch.randn(2, 5, 7).to(torch.bfloat16)
    plain = torch.Tensor.softmax
    monkeypatch.setattr(torch.Tensor, "softmax", lambda t, dim: plain(t.float(), dim))   # autocast's policy
    w = topk_attention_weights(logits, k=3)
    assert w.dtype == torch.float32
    assert ((w > 0).sum(-1) == 3).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5))
    monkeypatch.undo()
    torch.testing.assert_close(w, topk_attention_weights(logits.float(), k=3))


@pytest.mark.parametrize("k", [12, 50])
def test_k_at_least_batch_equals_plain_multi_head_attention(xy, k):
    x, _ = xy
    ssa = StructureConstrainedAttention(D, H, k=k).eval()
    mha = torch.nn.MultiheadAttention(D, H, bias=True, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(ssa.qkv.weight)
        mha.in_proj_bias.copy_(ssa.qkv.bias)
        mha.out_proj.weight.copy_(torch.eye(D))
        mha.out_proj.bias.zero_()
        ref, ref_w = mha(x[None], x[None], x[None], need_weights=True, average_attn_weights=False)
        out, w = ssa(x, return_attention=True)
        torch.testing.assert_close(out, ref[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w, ref_w[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ssa(x, visual_graph(x, 50)), ref[0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- SSA on a fixed feature-kNN graph (option)
def test_feature_graph_attention_matches_loops(xy):
    x, _ = xy
    ssa = StructureConstrainedAttention(D, H).eval()
    adj = visual_graph(x, 4)
    W, b = ssa.qkv.weight, ssa.qkv.bias
    q, k, v = (x @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D] for i in range(3))
    ref = naive_mha_rows(q, k, v, H, lambda i: torch.nonzero(adj[i]).flatten().tolist())
    with torch.no_grad():
        out, w = ssa(x, adj, return_attention=True)
        torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-5)
        assert torch.equal(w != 0, rearrange(adj, "i j -> 1 i j").expand(H, -1, -1))   # same graph in every head


def test_non_neighbours_have_exactly_zero_influence(xy):
    x, _ = xy
    ssa = StructureConstrainedAttention(D, H).eval()
    adj = visual_graph(x, 4)
    i = 0
    outsider = int(torch.nonzero(~adj[i])[0])
    x2 = x.clone()
    x2[outsider] += 5.0
    with torch.no_grad():
        assert torch.equal(ssa(x, adj)[i], ssa(x2, adj)[i])   # bit-for-bit: masked keys get weight 0
        assert not torch.equal(ssa(x, adj)[outsider], ssa(x2, adj)[outsider])


# ------------------------------------------------------------------------------------ block
@pytest.mark.parametrize("graph", ["logits", "features"])
@pytest.mark.parametrize("lam,depth", [(0.5, 1), (0.2, 2), (1.0, 1), (0.0, 1)])
def test_bgformer_matches_loops(xy, lam, depth, graph):
    x, y = xy
    torch.manual_seed(0)
    m = BGFormer(D, H, depth=depth, k=5, lam=lam, graph=graph).eval()
    with torch.no_grad():
        for blk in m.blocks:                 # non-trivial LayerNorm affines, so a skipped LN would show
            for ln in (blk.norm, blk.ffn[0]):
                ln.weight.uniform_(0.5, 1.5), ln.bias.uniform_(-0.5, 0.5)
        torch.testing.assert_close(m(x, y), naive_bgformer(m, x, y), rtol=1e-4, atol=1e-5)


def test_default_graph_is_the_per_head_logits_graph():
    assert BGFormer(D, H).blocks[0].graph_kind == "logits"
    assert BGFormer(D, H, visual="minmax").blocks[0].graph_kind == "features"
    assert BGFormer(D, H, graph="features").blocks[0].graph_kind == "features"


def test_ffn_is_pre_norm(xy):
    """With both graph paths switched off (λ = 1, P_v = 0) the block is x + MLP(LN(x)): its residual
    ignores any per-sample shift and positive scale of x, which only a LayerNorm in front gives."""
    x, _ = xy
    blk = BGFormerBlock(D, H, lam=1.0).eval()
    with torch.no_grad():
        blk.proj_visual[0].weight.zero_(), blk.proj_visual[0].bias.zero_()
        moved = 3.0 * x + torch.randn(12, 1)
        torch.testing.assert_close(blk(moved) - moved, blk(x) - x, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(blk(x) - x, torch.zeros(12, D))


def test_dybgr_cub_setting(xy):
    """The follow-up's CUB command: K = 30, λ = 0.3, depth 2, dropout 0 (batch of 405 = 45 × 9 there)."""
    m = BGFormer(D, H, k=30, lam=0.3, depth=2, dropout=0.0).train()
    y = torch.arange(45).repeat_interleave(9)[:90]
    x = torch.randn(90, D)
    out, maps = m(x, y, return_attention=True)
    assert out.shape == (90, D) and len(maps) == 2
    assert all(((w != 0).sum(-1) == 30).all() for w in maps)
    small_x, small_y = xy                                            # B = 12 < K: every key kept
    assert ((m(small_x, small_y, return_attention=True)[1][0] != 0).sum(-1) == 12).all()


def test_return_attention(xy):
    x, y = xy
    m = BGFormer(D, H, k=4, depth=2).eval()
    with torch.no_grad():
        out, maps = m(x, y, return_attention=True)
        assert torch.equal(out, m(x, y)) and [w.shape for w in maps] == [(H, 12, 12)] * 2
        _, mm = BGFormer(D, H, k=4, visual="minmax").eval()(x, y, return_attention=True)
    assert mm[0].shape == (1, 12, 12) and ((mm[0] != 0).sum(-1) <= 4).all()


@pytest.mark.parametrize("graph", ["logits", "features"])
def test_block_permutation_equivariance(xy, graph):
    x, y = xy
    m = BGFormer(D, H, k=5, depth=2, graph=graph).eval()
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(m(x[perm], y[perm]), m(x, y)[perm], rtol=1e-5, atol=1e-5)


def test_lambda_one_removes_the_label_path_exactly(xy):
    x, y = xy
    m = BGFormer(D, H, k=5, lam=1.0).eval()
    with torch.no_grad():
        out = m(x, y)
        assert torch.equal(out, m(x, torch.randint(0, 3, (12,))))
        assert torch.equal(out, m(x, None))
    with pytest.raises(ValueError, match="needs the labels"):
        BGFormer(D, H, lam=0.5)(x, None)


def test_labels_matter_when_lambda_below_one(xy):
    x, y = xy
    m = BGFormer(D, H, k=5, lam=0.5).eval()
    with torch.no_grad():
        assert not torch.allclose(m(x, y), m(x, torch.zeros_like(y)))


def test_minmax_variant(xy):
    x, y = xy
    m = BGFormer(D, H, k=4, visual="minmax").eval()
    blk = m.blocks[0]
    with torch.no_grad():
        blk.norm.weight.uniform_(0.5, 1.5), blk.norm.bias.uniform_(-0.5, 0.5)
        xn = naive_layer_norm(x, blk.norm.weight, blk.norm.bias)
        adj = torch.zeros(12, 12, dtype=torch.bool)
        for i, js in enumerate(naive_knn(xn, 4)):
            adj[i, js] = True
        torch.testing.assert_close(blk.visual(xn, adj), naive_minmax(xn, naive_knn(xn, 4)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(x, y), naive_bgformer(m, x, y), rtol=1e-4, atol=1e-5)
        flat = torch.ones(3, D)                                      # all kept scores equal: weight 1 each
        torch.testing.assert_close(blk.visual(flat, torch.ones(3, 3, dtype=torch.bool)), 3 * flat)


def _minmax_pair(d, depth, k, lam, seed=0, shift=0.5, **options):
    """Our min-max BGFormer with non-trivial LayerNorms (biases in ±``shift``) and label-path bias, and the
    SGFormer2 rewrite holding its weights."""
    torch.manual_seed(seed)
    ours = BGFormer(d, H, depth=depth, k=k, lam=lam, visual="minmax", dropout=0.0, **options).eval()
    with torch.no_grad():
        for blk in ours.blocks:
            for ln in (blk.norm, blk.ffn[0]):
                ln.weight.uniform_(0.5, 1.5), ln.bias.uniform_(-shift, shift)
            if blk.semantic.weight.bias is not None:
                blk.semantic.weight.bias.uniform_(-0.5, 0.5)
    ref = [MinMaxBlock(d, lam, k).load_from(blk).eval() for blk in ours.blocks]
    return ours, ref


@pytest.mark.parametrize("k,lam,depth,shift", [(3, 0.3, 2, 0.5), (5, 0.7, 1, 0.5), (12, 0.5, 1, 0.5),
                                               (40, 0.3, 2, 0.5), (2, 0.0, 1, 0.5), (3, 0.3, 1, 6.0)])
def test_minmax_block_equals_the_authors_sgformer2_block(xy, k, lam, depth, shift):
    """``visual="minmax"`` with its defaults is SGFormer2's Block as model_SGFormer builds it (rewritten from
    the byte code in tests/reference_sgformer2.py): one shared projection, a bias on the label path's W,
    a plain top-K of X̂X̂ᵀ (self not forced in: a large LN shift makes rows whose own S[i, i] is not
    among their K largest), min-max weights; K > B keeps the whole batch."""
    x, y = xy
    ours, ref = _minmax_pair(D, depth, k, lam, shift=shift)
    blk = ours.blocks[0]
    if shift > 1:
        assert not blk.graph(blk.norm(x), y).visual.diagonal().all()
    assert blk.tied_projection and not blk.self_loops and blk.proj_semantic is blk.proj_visual
    assert blk.semantic.weight.bias is not None
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y), minmax_model(ref, x, y), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.train()(x, y), minmax_model(ref, x, y), rtol=1e-5, atol=1e-5)   # dropout 0


def test_minmax_options_depart_from_sgformer2_where_asked(xy):
    """Our older choices, now options: two projections (no label-path bias) equal SGFormer2's block only
    while P_s = P_v and b = 0; forced self-loops change which neighbours a row keeps."""
    x, y = xy
    xs = x * torch.linspace(0.3, 2.0, 12)[:, None]                  # unequal norms: S[i, i] is not always the largest
    untied, _ = _minmax_pair(D, 1, 4, 0.3, tied_projection=False)
    blk = untied.blocks[0]
    assert blk.proj_semantic is not blk.proj_visual and blk.semantic.weight.bias is None
    ref = MinMaxBlock(D, 0.3, 4).load_from(blk).eval()
    with torch.no_grad():
        blk.proj_semantic.load_state_dict(blk.proj_visual.state_dict())
        torch.testing.assert_close(untied(xs, y), minmax_model([ref], xs, y), rtol=1e-5, atol=1e-5)
        blk.proj_semantic[0].weight.add_(0.1 * torch.randn(D, D))
        assert (untied(xs, y) - minmax_model([ref], xs, y)).abs().max() > 1e-2

    tied, _ = _minmax_pair(D, 1, 4, 0.3)
    selfish, _ = _minmax_pair(D, 1, 4, 0.3, self_loops=True)
    with torch.no_grad():
        tied.blocks[0].norm.bias.uniform_(-6.0, 6.0)                # a large LN shift can outweigh S[i, i]
        selfish.load_state_dict(tied.state_dict())
        assert selfish.blocks[0].graph(selfish.blocks[0].norm(xs), y).visual.diagonal().all()
        assert not tied.blocks[0].graph(tied.blocks[0].norm(xs), y).visual.diagonal().all()
        # a forced-in node that is not among its K most similar is its row's minimum: weight 0, but it
        # moves the row's minimum, so the other weights change
        w = [m(xs, y, return_attention=True)[1][0][0] for m in (tied, selfish)]    # (B, B) each
        assert not torch.allclose(w[0], w[1])
        assert (selfish(xs, y) - tied(xs, y)).abs().max() > 1e-3


def test_minmax_attention_dropout(xy):
    """SGFormer2 applies attn_drop to the min-max weights (source line 80); ``attention_dropout`` sets it apart
    from the projections' and the FFN's dropout (None: the same ``dropout``)."""
    x, y = xy
    m = BGFormer(D, H, k=5, visual="minmax", dropout=0.0, attention_dropout=0.5)
    assert m.blocks[0].visual.dropout == 0.5 and m.blocks[0].proj_visual[1].p == 0.0
    assert BGFormer(D, H, visual="minmax", dropout=0.2).blocks[0].visual.dropout == 0.2
    assert BGFormer(D, H, dropout=0.2, attention_dropout=0.0).blocks[0].visual.dropout == 0.0
    with torch.no_grad():
        _, (ref,) = m.eval()(x, y, return_attention=True)
        torch.manual_seed(0)
        _, (w,) = m.train()(x, y, return_attention=True)
    assert ((w != 0) <= (ref != 0)).all() and (w != 0).sum() < (ref != 0).sum()
    torch.testing.assert_close(w[w != 0], ref[w != 0] / 0.5)


def test_augment_contract(xy):
    x, y = xy
    m = BGFormer(D, H, dropout=0.0).train()
    xa, ya = m.augment(x, y)
    assert torch.equal(xa[:12], x) and torch.equal(ya, torch.cat([y, y]))
    torch.testing.assert_close(xa[12:], m(x, y))
    m.eval()
    xe, ye = m.augment(x, y)
    assert xe is x and ye is y


@pytest.mark.parametrize("graph,visual", [("logits", "attention"), ("features", "attention"), (None, "minmax")])
def test_gradients_reach_every_parameter(xy, graph, visual):
    x, y = xy
    x = x.clone().requires_grad_(True)
    m = BGFormer(D, H, k=5, depth=2, graph=graph, visual=visual).train()
    (m(x, y) * torch.randn(12, D)).sum().backward()
    assert x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("graph", ["logits", "features"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes_on_cpu(xy, dtype, graph):
    x, y = xy
    m = BGFormer(D, H, k=5, graph=graph).eval().to(dtype)
    ref = BGFormer(D, H, k=5, graph=graph).eval()
    ref.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    with torch.no_grad():
        out = m(x.to(dtype), y)
        assert out.dtype == dtype and torch.isfinite(out.float()).all()
        tol = 1e-5 if dtype == torch.float32 else 0.1
        torch.testing.assert_close(out.float(), ref(x.to(dtype).float(), y), rtol=tol, atol=tol)


def test_bad_options():
    with pytest.raises(ValueError, match="lam"):
        BGFormerBlock(D, H, lam=1.5)
    with pytest.raises(ValueError, match="visual"):
        BGFormerBlock(D, H, visual="gcn")
    with pytest.raises(ValueError, match="graph must be"):
        BGFormerBlock(D, H, graph="labels")
    with pytest.raises(ValueError, match="minmax.*graph='features'"):
        BGFormer(D, H, visual="minmax", graph="logits")
    with pytest.raises(ValueError, match="self_loops applies to the fixed feature graph"):
        BGFormer(D, H, self_loops=True)
    with pytest.raises(ValueError, match="k must be >= 1"):
        StructureConstrainedAttention(D, H, k=0)
    with pytest.raises(ValueError, match="built for feature width 16"):
        BGFormer(D, H)(torch.randn(4, 8), torch.arange(4))
    with pytest.raises(ValueError, match=r"labels of shape \(B,\) = \(4,\), got \(4, 1\)"):
        BGFormer(D, H).train().augment(torch.randn(4, D), torch.arange(4)[:, None])


def test_integration_in_retrieval_net():
    torch.manual_seed(0)
    net = RetrievalNet("smallcnn", embed_dim=8, pretrained=False, batch_module="bgformer",
                       batch_module_kwargs={"num_heads": 4, "k": 3}).train()
    img, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2])
    emb, y2 = net(img, y)
    assert emb.shape == (12, 8) and torch.equal(y2, torch.cat([y, y]))
    net.eval()
    calls = []
    net.batch_module.register_forward_pre_hook(lambda m, a: calls.append(1))
    with torch.no_grad():
        net(img)
    assert calls == []


# ------------------------------------------------------------------- attention on other classes
def test_other_class_mass_matches_a_loop():
    from bgtutorial.graph import other_class_mass

    g = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    attn = torch.randn(2, 4, 7, 7, generator=g).softmax(-1)           # (..., B, B), rows sum to 1
    ref = torch.zeros(2, 4, 7)
    for a in range(2):
        for h in range(4):
            for i in range(7):
                ref[a, h, i] = sum(float(attn[a, h, i, j]) for j in range(7) if y[j] != y[i])
    torch.testing.assert_close(other_class_mass(attn, y), ref)
    torch.testing.assert_close(other_class_mass(attn, y, mean=True), ref.mean(-1))
    uniform = torch.full((7, 7), 1 / 7)
    torch.testing.assert_close(other_class_mass(uniform, y), torch.tensor([4, 4, 4, 4, 4, 6, 4]) / 7)
    same_only = semantic_graph(y).float()
    assert other_class_mass(same_only / same_only.sum(1, keepdim=True), y).abs().max() == 0
    with pytest.raises(ValueError, match="labels"):
        other_class_mass(attn, y[:5])


def test_top_k_attention_puts_less_mass_on_other_classes_when_it_keeps_the_class(xy):
    """A head whose logits rank classmates first: top-K with K = class size removes all other-class mass."""
    from bgtutorial.graph import other_class_mass

    _, y = xy
    logits = semantic_graph(y).float() * 5 + torch.randn(12, 12, generator=torch.Generator().manual_seed(1)) * 0.1
    full = topk_attention_weights(logits, 12)
    sparse = topk_attention_weights(logits, 1)                        # the best logit is a classmate
    assert float(other_class_mass(full, y, mean=True)) > 0.01
    assert float(other_class_mass(sparse, y, mean=True)) == 0.0
