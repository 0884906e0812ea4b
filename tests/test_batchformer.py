"""BatchFormer against the authors' torch layer, a naive loop reference, and its properties."""
import pytest
import torch
import torch.nn.functional as F

from bgtutorial import BatchFormer, RetrievalNet

from naive import naive_batchformer_layer

D, H = 16, 4


def torch_layer(dropout=0.5):
    torch.manual_seed(1)
    return torch.nn.TransformerEncoderLayer(D, H, D, dropout)   # the authors' module (post-norm, ReLU)


@pytest.fixture
def x():
    return torch.randn(10, D, generator=torch.Generator().manual_seed(0))


def test_equals_authors_transformer_encoder_layer(x):
    ref = torch_layer().eval()
    bf = BatchFormer(D, num_heads=H, dropout=0.5).eval()
    bf.layers[0].load_from_torch(ref)
    with torch.no_grad():
        expected = ref(x.unsqueeze(1)).squeeze(1)     # (B, 1, D): the batch as a sequence, as the authors do
        torch.testing.assert_close(bf(x), expected, rtol=1e-5, atol=1e-5)


def test_equals_authors_layer_in_training_mode_without_dropout(x):
    ref = torch_layer(dropout=0.0).train()
    bf = BatchFormer(D, num_heads=H, dropout=0.0).train()
    bf.layers[0].load_from_torch(ref)
    torch.testing.assert_close(bf(x), ref(x.unsqueeze(1)).squeeze(1), rtol=1e-5, atol=1e-5)


def test_fresh_layer_starts_where_the_authors_layer_does():
    """nn.MultiheadAttention draws its packed Q/K/V weight Xavier-uniform and zeroes both of its biases;
    nn.Linear's default (Kaiming-uniform, a = sqrt 5) would give the packed weight a smaller spread and
    non-zero biases. Compare a fresh layer's statistics with a fresh nn.TransformerEncoderLayer's."""
    d = 64                                                          # 3·64·64 = 12,288 weights: a tight std
    torch.manual_seed(0)
    ours = BatchFormer(d, num_heads=H).layers[0]
    torch.manual_seed(1)
    ref = torch.nn.TransformerEncoderLayer(d, H, d, 0.5)
    pairs = {"packed Q/K/V weight": (ours.qkv.weight, ref.self_attn.in_proj_weight),
             "W_O weight": (ours.proj.weight, ref.self_attn.out_proj.weight),
             "FFN W1": (ours.ffn1.weight, ref.linear1.weight), "FFN W2": (ours.ffn2.weight, ref.linear2.weight)}
    for name, (a, b) in pairs.items():
        a, b = a.detach(), b.detach()
        assert a.shape == b.shape, name
        # both uniform on one interval: the std estimate of n draws has a standard error of std·sqrt(0.2 / n),
        # so two independent estimates differ by less than 4·sqrt(2) of it
        se = float(b.std()) * (0.2 / b.numel()) ** 0.5
        assert abs(float(a.std()) - float(b.std())) < 4 * 2 ** 0.5 * se, name
        assert abs(float(a.abs().max()) - float(b.abs().max())) < 0.02 * float(b.abs().max()), name
    bound = (6 / (d + 3 * d)) ** 0.5                                # Xavier-uniform of a (3D, D) matrix
    assert float(ours.qkv.weight.detach().std()) == pytest.approx(bound / 3 ** 0.5, rel=0.02)
    assert float(ours.qkv.weight.detach().std()) > 1.15 * (1 / d) ** 0.5 / 3 ** 0.5     # not nn.Linear's default
    for bias, ref_bias in ((ours.qkv.bias, ref.self_attn.in_proj_bias), (ours.proj.bias, ref.self_attn.out_proj.bias)):
        assert torch.equal(bias, torch.zeros_like(bias)) and torch.equal(ref_bias, torch.zeros_like(ref_bias))
    for mine, theirs in ((ours.norm1, ref.norm1), (ours.norm2, ref.norm2)):
        torch.testing.assert_close(mine.state_dict(), theirs.state_dict())


def test_equals_naive_loop_reference(x):
    bf = BatchFormer(D, num_heads=H).eval()
    with torch.no_grad():
        torch.testing.assert_close(bf(x), naive_batchformer_layer(bf.layers[0], x), rtol=1e-5, atol=1e-5)


def test_stacked_layers_compose(x):
    bf = BatchFormer(D, num_heads=H, num_layers=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(bf(x), bf.layers[1](bf.layers[0](x)))


def test_batch_permutation_equivariance(x):
    bf = BatchFormer(D, num_heads=H).eval()
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(bf(x[perm]), bf(x)[perm], rtol=1e-5, atol=1e-6)


def test_every_sample_influences_every_output(x):
    bf = BatchFormer(D, num_heads=H).eval()
    x2 = x.clone()
    x2[7] += 1.0
    with torch.no_grad():
        changed = (bf(x2) - bf(x)).abs().amax(1) > 1e-6
    assert changed.all(), "full attention: changing one sample changes every output"


def test_augment_training_and_eval(x):
    y = torch.arange(10) % 3
    bf = BatchFormer(D, num_heads=H, dropout=0.0)
    bf.train()
    xa, ya = bf.augment(x, y)
    assert xa.shape == (20, D) and torch.equal(ya, torch.cat([y, y]))
    assert torch.equal(xa[:10], x)                               # plain half first, untouched
    torch.testing.assert_close(xa[10:], bf(x))
    bf.eval()
    xe, ye = bf.augment(x, y)
    assert xe is x and ye is y                                   # eval: identity


def test_gradients_reach_every_parameter_and_the_backbone_through_both_halves():
    torch.manual_seed(0)
    net = RetrievalNet("smallcnn", embed_dim=8, pretrained=False, batch_module="batchformer",
                       batch_module_kwargs={"dropout": 0.0}).train()
    img, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2])
    emb, y2 = net(img, y)
    assert emb.shape == (12, 8)
    for half in (slice(0, 6), slice(6, 12)):
        net.zero_grad()
        emb, _ = net(img, y)
        (emb[half] * torch.randn_like(emb[half])).sum().backward()
        assert net.backbone.body[1].weight.grad.abs().sum() > 0, "backbone gets gradient from each half"
        if half.start == 6:
            for name, p in net.batch_module.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.batch_module.parameters())


def test_batch_of_one(x):
    bf = BatchFormer(D, num_heads=H).eval()
    out = bf(x[:1])
    assert out.shape == (1, D) and torch.isfinite(out).all()
    # attention over a single sample is the sample's own value: the layer stays well defined
    with torch.no_grad():
        torch.testing.assert_close(out, naive_batchformer_layer(bf.layers[0], x[:1]), rtol=1e-5, atol=1e-5)


def test_bad_shapes_give_clear_errors(x):
    bf = BatchFormer(D, num_heads=H)
    with pytest.raises(ValueError, match="built for feature width 16 but got width 12"):
        bf(torch.randn(4, 12))
    with pytest.raises(ValueError, match=r"pooled features of shape \(B, 16\)"):
        bf(torch.randn(4, 16, 7, 7))
    with pytest.raises(ValueError, match="divisible"):
        BatchFormer(10, num_heads=4)
    with pytest.raises(ValueError, match="batch size"):
        bf.train().augment(x, torch.arange(3))
    n = x.shape[0]
    for labels in (torch.arange(n)[:, None], torch.nn.functional.one_hot(torch.arange(n) % 3)):   # (B, 1), (B, C)
        with pytest.raises(ValueError, match=rf"labels of shape \(B,\) = \({n},\), got \({n}, \d+\); pass class"):
            bf.train().augment(x, labels)


def test_test_time_network_never_calls_the_module():
    torch.manual_seed(0)
    net = RetrievalNet("smallcnn", embed_dim=8, pretrained=False, batch_module="batchformer").eval()
    calls = []
    net.batch_module.register_forward_pre_hook(lambda m, a: calls.append(1))
    img = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        e = net(img)
        e_with_labels, _ = net(img, torch.tensor([0, 0, 1, 1]))
        plain = RetrievalNet("smallcnn", embed_dim=8, pretrained=False).eval()
        plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("batch_module.")})
        torch.testing.assert_close(plain(img), e)
    assert calls == [], "eval forward must not touch BatchFormer"
    torch.testing.assert_close(e_with_labels, e)


def test_shared_head_sees_both_halves():
    torch.manual_seed(0)
    net = RetrievalNet("smallcnn", embed_dim=8, pretrained=False, batch_module="batchformer",
                       batch_module_kwargs={"dropout": 0.0}).train()
    img, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 0, 1, 1])
    emb, _ = net(img, y)
    f = net.features(img)
    torch.testing.assert_close(emb[:4], net.embed(f))
    torch.testing.assert_close(emb[4:], net.embed(net.batch_module(f)))
