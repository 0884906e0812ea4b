"""Batch graph and BGFormer against loop references, and their properties."""
import math

import pytest
import torch

from bgtutorial import RetrievalNet
from bgtutorial.bgformer import BGFormer, BGFormerBlock, StructureConstrainedAttention
from bgtutorial.graph import BatchGraph, normalize_adjacency, semantic_graph, visual_graph
from naive import (naive_bgformer, naive_knn, naive_layer_norm, naive_minmax, naive_mha_rows,
                   naive_normalized_label_graph)

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


# -------------------------------------------------------------------------------------- SSA
def test_ssa_matches_loops(xy):
    x, _ = xy
    ssa = StructureConstrainedAttention(D, H).eval()
    adj = visual_graph(x, 4)
    q, k, v = ssa.qkv(x).split(D, dim=1)
    ref = naive_mha_rows(q, k, v, H, lambda i: torch.nonzero(adj[i]).flatten().tolist())
    with torch.no_grad():
        torch.testing.assert_close(ssa(x, adj), ref.detach(), rtol=1e-5, atol=1e-5)


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


def test_full_graph_equals_ordinary_attention(xy):
    x, _ = xy
    ssa = StructureConstrainedAttention(D, H).eval()
    mha = torch.nn.MultiheadAttention(D, H, bias=True, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(ssa.qkv.weight)
        mha.in_proj_bias.copy_(ssa.qkv.bias)
        mha.out_proj.weight.copy_(torch.eye(D))
        mha.out_proj.bias.zero_()
        ref = mha(x[None], x[None], x[None], need_weights=False)[0][0]
        torch.testing.assert_close(ssa(x, visual_graph(x, 50)), ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ block
@pytest.mark.parametrize("lam,depth", [(0.5, 1), (0.2, 2), (1.0, 1), (0.0, 1)])
def test_bgformer_matches_loops(xy, lam, depth):
    x, y = xy
    torch.manual_seed(0)
    m = BGFormer(D, H, depth=depth, k=5, lam=lam).eval()
    with torch.no_grad():
        for blk in m.blocks:                 # non-trivial LayerNorm affines, so a skipped LN would show
            for ln in (blk.norm, blk.ffn[0]):
                ln.weight.uniform_(0.5, 1.5), ln.bias.uniform_(-0.5, 0.5)
        torch.testing.assert_close(m(x, y), naive_bgformer(m, x, y), rtol=1e-4, atol=1e-5)


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


def test_block_permutation_equivariance(xy):
    x, y = xy
    m = BGFormer(D, H, k=5, depth=2).eval()
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


def test_augment_contract(xy):
    x, y = xy
    m = BGFormer(D, H, dropout=0.0).train()
    xa, ya = m.augment(x, y)
    assert torch.equal(xa[:12], x) and torch.equal(ya, torch.cat([y, y]))
    torch.testing.assert_close(xa[12:], m(x, y))
    m.eval()
    xe, ye = m.augment(x, y)
    assert xe is x and ye is y


def test_gradients_reach_every_parameter(xy):
    x, y = xy
    x = x.clone().requires_grad_(True)
    m = BGFormer(D, H, k=5, depth=2).train()
    (m(x, y) * torch.randn(12, D)).sum().backward()
    assert x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes_on_cpu(xy, dtype):
    x, y = xy
    m = BGFormer(D, H, k=5).eval().to(dtype)
    ref = BGFormer(D, H, k=5).eval()
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
    with pytest.raises(ValueError, match="built for feature width 16"):
        BGFormer(D, H)(torch.randn(4, 8), torch.arange(4))


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
