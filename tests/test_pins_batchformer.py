"""BatchFormer's readouts and options pinned by loops written here: the attention weights drawn in the
notebooks, the attention dropout of training, the authors' defaults, the FFN width and the messages."""
import math

import pytest
import torch

from bgtutorial import BatchFormer
from bgtutorial.batchformer import BatchFormerLayer


def weights_by_loops(layer, x, heads):
    """softmax_j(q_i · k_j / sqrt(d)) per head, q and k read from the packed (3D, D) projection row by row."""
    w, b = layer.qkv.weight.tolist(), layer.qkv.bias.tolist()
    n, dim = x.shape
    d = dim // heads
    rows = x.tolist()
    proj = [[sum(w[o][i] * r[i] for i in range(dim)) + b[o] for o in range(3 * dim)] for r in rows]   # (B, 3D)
    out = []
    for h in range(heads):
        q = [p[h * d:(h + 1) * d] for p in proj]
        k = [p[dim + h * d:dim + (h + 1) * d] for p in proj]
        head = []
        for i in range(n):
            s = [sum(a * c for a, c in zip(q[i], k[j])) / math.sqrt(d) for j in range(n)]
            top = max(s)
            e = [math.exp(v - top) for v in s]
            head.append([v / sum(e) for v in e])
        out.append(head)
    return out


def test_attention_weights_match_loops():
    torch.manual_seed(0)
    layer = BatchFormerLayer(8, num_heads=2).eval()
    x = torch.randn(5, 8)
    got = layer.attention_weights(x)
    assert got.shape == (2, 5, 5)
    want = weights_by_loops(layer, x, 2)
    for h in range(2):
        for i in range(5):
            assert got[h, i].tolist() == pytest.approx(want[h][i], abs=1e-6)


def test_the_authors_defaults_four_heads_dropout_half_ffn_width_d():
    layer = BatchFormerLayer(8)
    assert (layer.num_heads, layer.dropout, layer.drop.p, layer.ffn1.out_features) == (4, 0.5, 0.5, 8)
    module = BatchFormer(8, num_heads=2, ffn_dim=12, dropout=0.25, num_layers=2)
    assert len(module.layers) == 2
    assert all((ly.num_heads, ly.dropout, ly.ffn1.out_features, ly.ffn2.in_features) == (2, 0.25, 12, 12)
               for ly in module.layers)


def test_attention_dropout_acts_in_training_only():
    """With the residual dropout switched off, two training passes still differ: the attention weights are
    dropped; in eval mode the attention is deterministic."""
    torch.manual_seed(0)
    layer = BatchFormerLayer(8, num_heads=2, dropout=0.5)
    layer.drop = torch.nn.Identity()
    x = torch.randn(6, 8)
    layer.train()
    torch.manual_seed(1)
    first = layer.attention(x)
    torch.manual_seed(2)
    assert not torch.allclose(layer.attention(x), first)
    layer.eval()
    assert torch.equal(layer.attention(x), layer.attention(x))


def test_messages_name_the_module_and_the_fix():
    module = BatchFormer(8)
    with pytest.raises(ValueError) as err:
        module(torch.randn(2, 8, 3))
    assert str(err.value) == ("BatchFormer expects pooled features of shape (B, 8), got (2, 8, 3); "
                              "pool the backbone's feature map first")
    with pytest.raises(ValueError, match=r"^BatchFormer was built for feature width 8 but got width 6; build it "
                                         r"with dim=6"):
        module(torch.randn(2, 6))
    module.train()
    with pytest.raises(ValueError) as err:
        module.augment(torch.randn(4, 8), torch.zeros(4, 1))
    assert str(err.value).endswith("pass class indices, not one-hot or (B, 1) labels (y.argmax(1) or y.flatten())")
    with pytest.raises(ValueError, match=r"^features and labels disagree on the batch size: 4 vs 3$"):
        module.augment(torch.randn(4, 8), torch.zeros(3))
