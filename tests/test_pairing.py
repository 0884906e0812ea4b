"""Pairing across methods: at a seed, the baseline and each batch module draw the same head, proxies and
everything after them; only the module's own weights (and dropout masks) come from a stream of its own."""
import hashlib

import pytest
import torch

from bgtutorial.config import load_config
from bgtutorial.models import GLYPH_WEIGHTS, HEAD_INITS, RetrievalNet
from bgtutorial.rng import OwnStream, module_seed
from bgtutorial.train import build_model, train
from bgtutorial.utils import seed_everything

METHODS = ("none", "batchformer", "bgformer")
TINY = dict(views=1, epochs=1, batch_size=20, m=4, steps_per_epoch=3, eval_nmi=False, progress=False, embed_dim=16)


def _build(backbone, head_init, module, seed=3, pretrained=False):
    seed_everything(seed)
    net = RetrievalNet(backbone, 16, pretrained, None if module == "none" else module, head_init=head_init,
                       module_seed=seed, shared_head=False)
    return net, torch.get_rng_state()


@pytest.mark.parametrize("backbone,pretrained", [("smallcnn", True), ("smallcnn", False), ("resnet18", False)])
@pytest.mark.parametrize("head_init", HEAD_INITS)
def test_every_method_draws_the_same_heads_and_leaves_the_global_stream_alone(backbone, pretrained, head_init):
    built = {m: _build(backbone, head_init, m, pretrained=pretrained) for m in METHODS}
    base, base_state = built["none"]
    for m in ("batchformer", "bgformer"):
        net, state = built[m]
        assert net.batch_module is not None and net.module_stream is not None
        assert torch.equal(state, base_state), f"building {m} moved the global generator"
        for name in ("head", "module_head"):
            for key, value in getattr(base, name).state_dict().items():
                assert torch.equal(value, getattr(net, name).state_dict()[key]), f"{m}: {name}.{key} differs"


def test_the_vit_tiers_head_is_shared_across_methods_too():
    heads = [_build("vit_s16", "orthogonal", m)[0].head.weight for m in METHODS]
    assert torch.equal(heads[0], heads[1]) and torch.equal(heads[0], heads[2])


def test_the_module_has_a_seeded_stream_of_its_own():
    a, _ = _build("smallcnn", "default", "batchformer", seed=3)
    b, _ = _build("smallcnn", "default", "batchformer", seed=3)
    c, _ = _build("smallcnn", "default", "batchformer", seed=4)
    wa, wb, wc = (n.batch_module.state_dict() for n in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)                 # reproducible at a seed
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)             # another seed, another module
    # the module's stream is not the run's: its first draws are not the head's first draws
    assert module_seed(3) != 3 and module_seed(3) != module_seed(4)
    g = torch.Generator().manual_seed(3)
    assert not torch.equal(OwnStream(module_seed(3)).cpu, g.get_state())


def test_module_dropout_in_training_draws_from_its_own_stream():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(4).repeat(2)
    states, outs = {}, {}
    for m in METHODS:
        net, _ = _build("smallcnn", "default", m)
        net.train()
        before = torch.get_rng_state()
        emb, labels = net(x, y)
        states[m] = torch.equal(before, torch.get_rng_state())
        outs[m] = emb
        if m != "none":
            # dropout 0.5 (BatchFormer) was drawn: the module's stream moved, the global one did not
            assert not torch.equal(net.module_stream.cpu, OwnStream(module_seed(3)).cpu)
    assert all(states.values()), states
    assert torch.equal(outs["none"], outs["batchformer"][:8])        # the plain half is the baseline's output


def test_own_stream_restores_the_global_generator_even_when_the_body_fails():
    stream = OwnStream(11)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    with pytest.raises(RuntimeError):
        with stream.active():
            torch.rand(3)
            raise RuntimeError("boom")
    assert torch.equal(before, torch.get_rng_state())
    # the body's draws count: the next block continues the stream, as a state_dict round trip does
    copy = OwnStream(0)
    copy.load_state_dict(stream.state_dict())
    with stream.active():
        a = torch.rand(4)
    with copy.active():
        b = torch.rand(4)
    g = torch.Generator().manual_seed(11)
    torch.rand(3, generator=g)
    assert torch.equal(a, b) and torch.equal(a, torch.rand(4, generator=g))


def test_bad_module_seed():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="non-negative integer seed"):
            module_seed(bad)


def test_losses_proxies_are_the_same_for_every_method():
    proxies = []
    for m in METHODS:
        cfg = load_config("digits", batch_module=m, seed=2, pretrained=False, **TINY)
        seed_everything(cfg.seed)
        _, loss = build_model(cfg, num_classes=10)
        proxies.append(torch.cat([p.detach().flatten() for p in loss.proxy_parameters()]))
    assert torch.equal(proxies[0], proxies[1]) and torch.equal(proxies[0], proxies[2])


def test_epoch0_metrics_and_first_plain_loss_are_equal_across_methods(tmp_path):
    hs = {m: train(load_config("glyphs", batch_module=m, seed=1, out=str(tmp_path / m), glyph_classes=12,
                               glyph_per_class=8, warm_epochs=0, **TINY)) for m in METHODS}
    for m in ("batchformer", "bgformer"):
        assert hs[m]["initial"] == hs["none"]["initial"], m
        # the first step's plain half sees the same head and proxies as the baseline's first step
        assert hs[m]["steps"][0]["loss_plain"] == pytest.approx(hs["none"]["steps"][0]["loss"], rel=1e-6)
    rec = hs["none"]["backbone_weights"]
    assert rec["file"] == GLYPH_WEIGHTS.name
    assert rec["sha256"] == hashlib.sha256(GLYPH_WEIGHTS.read_bytes()).hexdigest()
    assert hs["none"]["device_name"].startswith("cpu (")
