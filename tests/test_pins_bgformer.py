"""BGFormer's options and edges pinned by loops written here: top-K weights on non-square logits, attention
dropout reaching the weights in training only, min-max weights of a row with a small span, the defaults of
each part, λ = 1 needing no label graph, and the messages."""
import math

import pytest
import torch

from bgtutorial.bgformer import (BGFormer, BGFormerBlock, MinMaxGraphAggregation, StructureConstrainedAttention,
                                 topk_attention_weights)


def topk_rows(logits, k):
    """Per row: softmax over the k largest entries (ties: lower index), 0 elsewhere, by loops."""
    out = []
    for row in logits.tolist():
        keep = sorted(range(len(row)), key=lambda j: (-row[j], j))[:min(k, len(row))]
        top = max(row[j] for j in keep)
        e = {j: math.exp(row[j] - top) for j in keep}
        out.append([e[j] / sum(e.values()) if j in e else 0.0 for j in range(len(row))])
    return out


def test_topk_weights_on_non_square_logits():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))    # H = 2 heads, 3 queries, 5 keys
    got = topk_attention_weights(logits, 4)
    for h in range(2):
        assert got[h].tolist() == [pytest.approx(r, abs=1e-6) for r in topk_rows(logits[h], 4)]
    torch.testing.assert_close(topk_attention_weights(logits, 9), logits.softmax(-1))   # k >= N: every key
    with pytest.raises(ValueError, match=r"^k must be >= 1, got 0$"):
        topk_attention_weights(logits, 0)


def test_attention_dropout_reaches_the_weights_in_training_only():
    torch.manual_seed(0)
    sca = StructureConstrainedAttention(8, num_heads=2, k=3, dropout=0.5)
    x = torch.randn(6, 8)
    sca.eval()
    _, clean = sca(x, return_attention=True)
    sca.train()
    _, dropped = sca(x, return_attention=True)
    kept = clean != 0
    assert ((dropped == 0) & kept).any()                              # some kept weights dropped ...
    survivors = (dropped != 0)
    assert torch.allclose(dropped[survivors], 2 * clean[survivors])   # ... the others scaled by 1 / (1 - p)
    assert not (survivors & ~kept).any()


def test_defaults_of_the_parts():
    sca = StructureConstrainedAttention(16)
    assert (sca.num_heads, sca.k, sca.dropout) == (8, 8, 0.0)
    with pytest.raises(ValueError, match=r"^dim=10 must be divisible by num_heads=4$"):
        StructureConstrainedAttention(10, num_heads=4)
    mm = MinMaxGraphAggregation().train()                             # no dropout by default, even in training
    x, adj = torch.randn(5, 3), torch.ones(5, 5, dtype=torch.bool)
    assert torch.equal(mm(x, adj), mm.eval()(x, adj))


def test_minmax_weights_of_rows_with_a_small_span_by_loops():
    """Similarities well below 1 (span < 1): each kept entry (s - min) / (max - min), 0 off the graph."""
    g = torch.Generator().manual_seed(2)
    x = 0.1 * torch.randn(5, 3, generator=g)
    adj = torch.rand(5, 5, generator=g) > 0.4
    adj |= torch.eye(5, dtype=torch.bool) | torch.eye(5, dtype=torch.bool).roll(1, dims=1)   # two or more per row
    _, a = MinMaxGraphAggregation()(x, adj, return_attention=True)
    s = (x @ x.T).tolist()
    for i in range(5):
        kept = [j for j in range(5) if adj[i, j]]
        lo, hi = min(s[i][j] for j in kept), max(s[i][j] for j in kept)
        assert 0 < hi - lo < 1
        want = [(s[i][j] - lo) / (hi - lo) if adj[i, j] else 0.0 for j in range(5)]
        assert a[0, i].tolist() == pytest.approx(want, abs=1e-5)


def test_lam_one_needs_no_label_graph():
    """λ = 1 drops the label path: a batch without positive pairs is fine, and so are no labels at all."""
    torch.manual_seed(0)
    block = BGFormerBlock(8, num_heads=2, k=3, lam=1.0).eval()
    x = torch.randn(6, 8)
    assert torch.equal(block(x, torch.arange(6)), block(x, None))
    with pytest.raises(ValueError, match="no positive pair"):
        BGFormerBlock(8, num_heads=2, k=3, lam=0.5)(x, torch.arange(6))


def test_block_and_module_defaults():
    """The documented defaults: 8 heads, K = 8, λ = 0.5, dropout 0.1 on the projections and the FFN and on the
    visual weights, FFN width 4·D, positive pairs required, the label path's W without bias."""
    block = BGFormerBlock(16)
    assert (block.visual.num_heads, block.visual.k, block.k, block.lam) == (8, 8, 8, 0.5)
    assert block.visual.dropout == 0.1 and block.require_positive_pairs is True
    assert block.ffn[1].out_features == 64 and block.semantic.weight.bias is None
    assert [m.p for m in block.modules() if isinstance(m, torch.nn.Dropout)] == [0.1] * 4   # P_v, P_s, FFN twice
    assert isinstance(block.proj_semantic[1], torch.nn.Dropout) and isinstance(block.ffn[-1], torch.nn.Dropout)
    assert BGFormerBlock(16, dropout=0.2, attention_dropout=0.3).visual.dropout == 0.3
    assert BGFormerBlock(16, visual="minmax", dropout=0.2).visual.dropout == 0.2
    from bgtutorial.bgformer import SemanticPropagation

    assert SemanticPropagation(16).weight.bias is None and SemanticPropagation(16, bias=True).weight.bias is not None
    module = BGFormer(16)
    assert len(module.blocks) == 1 and (module.blocks[0].visual.num_heads, module.blocks[0].k) == (8, 8)


@pytest.mark.parametrize("visual, loops", [("attention", True), ("minmax", False)])
def test_the_feature_graph_keeps_self_loops_for_attention_only(visual, loops):
    block = BGFormerBlock(8, num_heads=2, k=2, visual=visual, graph="features")
    assert block.self_loops is loops
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    x[0] = 0.1 * x[5]                                                # 0's own similarity is not its largest
    g = block.graph(x, torch.arange(6) // 2)
    assert bool(g.visual[0, 0]) is loops


def test_messages_of_the_options_and_the_inputs():
    with pytest.raises(ValueError) as err:
        BGFormerBlock(8, num_heads=2, visual="minmax", graph="logits")
    assert str(err.value) == ("visual='minmax' has no attention logits to choose a graph from: use graph='features' "
                              "(or leave graph=None)")
    with pytest.raises(ValueError) as err:
        BGFormerBlock(8, num_heads=2, graph="logits", self_loops=True)
    assert str(err.value) == ("self_loops applies to the fixed feature graph only (the logits graph never forces a "
                              "node in): use graph='features', or leave self_loops=None")
    with pytest.raises(ValueError) as err:
        BGFormerBlock(8, num_heads=2)(torch.randn(4, 8))
    assert str(err.value) == ("BGFormer's semantic path needs the labels y (B,); it runs in training only. "
                              "Pass y, or lam=1 for the visual path alone.")
    module = BGFormer(8, num_heads=2)
    with pytest.raises(ValueError, match=r"^BGFormer expects pooled features of shape \(B, 8\), got \(4,\)"):
        module(torch.randn(4))
    with pytest.raises(ValueError) as err:
        module(torch.randn(4, 8), torch.zeros(4, 1))
    assert str(err.value).endswith("pass class indices, not one-hot or (B, 1) labels (y.argmax(1) or y.flatten())")
    with pytest.raises(ValueError, match=r"^features and labels disagree on the batch size: 4 vs 3$"):
        module(torch.randn(4, 8), torch.zeros(3))
