"""Shared vs unshared head: with shared_head=False the module stream has its own head and its own loss."""
import pytest
import torch
import torch.nn.functional as F

from bgtutorial.experiments import head_metrics
from bgtutorial.losses import MetricLoss
from bgtutorial.models import RetrievalNet, build_backbone, make_batch_module
from bgtutorial.config import load_config
from bgtutorial.data.splits import build_datasets
from bgtutorial.evaluate import embed_dataset
from bgtutorial.rng import module_seed
from bgtutorial.train import build_model, train

B, E, C = 8, 16, 4


def nets(shared: bool, seed: int = 0):
    torch.manual_seed(seed)
    net = RetrievalNet("smallcnn", embed_dim=E, pretrained=False, batch_module="batchformer",
                       batch_module_kwargs={"dropout": 0.0}, shared_head=shared)
    loss = MetricLoss("proxy_anchor", C, E, separate_module_loss=not shared)
    return net.train(), loss


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 3, 32, 32, generator=g), torch.arange(C).repeat_interleave(B // C)


def grads(net, loss, plain_weight):
    """Gradients of the loss with weight ``plain_weight`` on the plain half (1 - it on the module half)."""
    loss.plain_weight = plain_weight
    x, y = batch()
    emb, y2 = net(x, y)
    value = loss(emb, y2, batch_size=B)
    params = {"head": net.head.weight, "module_head": net.module_head.weight,
              "module": net.batch_module.layers[0].qkv.weight, "proxies": loss.loss.proxies,
              "module_proxies": loss.module_loss.proxies}
    return dict(zip(params, torch.autograd.grad(value, list(params.values()), allow_unused=True)))


def test_unshared_heads_are_distinct_parameters():
    net, loss = nets(shared=False)
    assert net.module_head is not net.head
    assert net.module_head.weight.data_ptr() != net.head.weight.data_ptr()
    assert not torch.equal(net.module_head.weight, net.head.weight)        # drawn independently
    keys = set(net.state_dict())
    assert {"module_head.weight", "module_head.bias"} <= keys
    assert loss.module_loss.proxies is not loss.loss.proxies
    assert {id(p) for p in loss.proxy_parameters()} == {id(loss.loss.proxies), id(loss.module_loss.proxies)}


def test_each_head_gets_gradients_only_from_its_own_half():
    net, loss = nets(shared=False)
    only_plain = grads(net, loss, 1.0)
    only_module = grads(net, loss, 0.0)
    both = grads(net, loss, 0.5)
    zero = lambda g: g is None or bool((g == 0).all())                      # noqa: E731
    # the plain half's loss reaches the plain head and its proxies, never the module stream's
    assert not zero(only_plain["head"]) and not zero(only_plain["proxies"])
    assert zero(only_plain["module_head"]) and zero(only_plain["module_proxies"]) and zero(only_plain["module"])
    # the module half's loss reaches the module head, the module and its own proxies, never the plain head
    assert not zero(only_module["module_head"]) and not zero(only_module["module"])
    assert not zero(only_module["module_proxies"])
    assert zero(only_module["head"]) and zero(only_module["proxies"])
    # the default loss (half each) reaches all of them, and is the sum of its halves
    assert all(not zero(g) for g in both.values())
    torch.testing.assert_close(both["head"], 0.5 * only_plain["head"])
    torch.testing.assert_close(both["module_head"], 0.5 * only_module["module_head"])


def test_unshared_forward_by_hand():
    net, loss = nets(shared=False)
    x, y = batch()
    emb, y2 = net(x, y)
    f = net.features(x)
    expect = torch.cat([F.normalize(net.head(f), dim=1), F.normalize(net.module_head(net.batch_module(f)), dim=1)])
    torch.testing.assert_close(emb, expect)
    assert torch.equal(y2, torch.cat([y, y]))
    value = loss(emb, y2, batch_size=B)
    torch.testing.assert_close(value, 0.5 * loss.loss(emb[:B], y) + 0.5 * loss.module_loss(emb[B:], y))
    with pytest.raises(ValueError, match="needs batch_size"):
        loss(emb, y2)
    net.eval()                                                              # test time: plain head, no module
    with torch.no_grad():
        torch.testing.assert_close(net(x), F.normalize(net.head(net.features(x)), dim=1))


def test_shared_head_is_unchanged():
    net, loss = nets(shared=True)
    # the random draws of a network with one head: backbone, then the head, from the global stream; the
    # module from a stream of its own, seeded from the run's seed (bgtutorial.rng), so the head is the baseline's
    torch.manual_seed(0)
    backbone, dim = build_backbone("smallcnn", pretrained=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(module_seed(0))
        module = make_batch_module("batchformer", dim, dropout=0.0)
    head = torch.nn.Linear(dim, E)
    ref = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
           **{f"batch_module.{k}": v for k, v in module.state_dict().items()},
           **{f"head.{k}": v for k, v in head.state_dict().items()}}
    assert set(net.state_dict()) == set(ref)
    for k, v in net.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert net.module_head is None and loss.module_loss is None
    assert not any(k.startswith("module_head") for k in net.state_dict())
    assert set(loss.state_dict()) == {"loss.proxies"}
    x, y = batch()
    emb, y2 = net(x, y)
    f = net.features(x)
    expect = F.normalize(net.head(torch.cat([f, net.batch_module(f)])), dim=1)   # one head on the doubled batch
    torch.testing.assert_close(emb, expect)
    torch.testing.assert_close(loss(emb, y2, batch_size=B), loss.loss(emb, y2))   # one loss over 2B rows
    with pytest.raises(ValueError, match="no module head"):
        net.embed(f, head="module")


def test_the_shared_head_gets_gradients_from_both_halves():
    net, loss = nets(shared=True)
    x, y = batch()
    grads_by_half = []
    for weight in (1.0, 0.0):
        loss.plain_weight = weight
        emb, y2 = net(x, y)
        g, = torch.autograd.grad(loss(emb, y2, batch_size=B), [net.head.weight])
        grads_by_half.append(g)
    assert all(g.abs().sum() > 0 for g in grads_by_half)


def test_config_refuses_an_unshared_head_without_a_module():
    with pytest.raises(ValueError, match="shared_head=False .* needs a batch module"):
        load_config("digits", shared_head=False)
    cfg = load_config("digits-batchformer", shared_head=False, embed_dim=E)
    net, loss = build_model(cfg, num_classes=5)
    assert net.module_head is not None and loss.module_loss is not None


def test_embed_dataset_module_head_and_head_metrics(tmp_path):
    cfg = load_config("digits-batchformer", out=str(tmp_path / "run"), shared_head=False, views=1, epochs=1,
                      batch_size=20, m=4, steps_per_epoch=2, eval_nmi=False, progress=False, embed_dim=E,
                      imbalance=3.0)
    history = train(cfg)
    metrics = head_metrics(cfg.run_dir)
    assert set(metrics) == {"plain head", "module head"}
    for k in ("R@1", "MAP@R"):                      # the plain head is what training evaluated
        assert metrics["plain head"][k] == pytest.approx(history["epochs"][-1][k])
        # and training evaluated the module head too, on the same plain features
        assert metrics["module head"][k] == pytest.approx(history["epochs"][-1][f"module_head_{k}"])
    # the module head on plain features, by hand
    net, _ = build_model(cfg, num_classes=5)
    state = torch.load(cfg.run_dir / "last.pt", weights_only=True)["model"]
    net.load_state_dict(state)
    _, test_ds = build_datasets(cfg)
    emb, labels = embed_dataset(net, test_ds, 256, torch.device("cpu"), outputs="module_head")
    x = torch.stack([test_ds[i][0] for i in range(5)])
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(emb[:5], F.normalize(net.module_head(net.features(x)), dim=1))
    shared = RetrievalNet("smallcnn", embed_dim=E, pretrained=False)
    with pytest.raises(ValueError, match="shared_head=False"):
        embed_dataset(shared, test_ds, outputs="module_head")


def test_module_loss_separates_the_head_from_the_form_of_the_loss():
    """module_loss="one": the module stream keeps its own head, but one loss (one set of proxies) scores the
    doubled batch, as with a shared head; "auto" follows shared_head; a bad value is refused."""
    one = load_config("digits-batchformer", shared_head=False, module_loss="one", embed_dim=E,
                      module_kwargs={"dropout": 0.0})
    net, loss = build_model(one, num_classes=5)
    net.train()
    assert net.module_head is not None and loss.module_loss is None and loss.plain_weight is None
    x, y = batch()
    emb, y2 = net(x, y)
    f = net.features(x)
    torch.testing.assert_close(emb[B:], F.normalize(net.module_head(net.batch_module(f)), dim=1))
    torch.testing.assert_close(loss(emb, y2, batch_size=B), loss.loss(emb, y2))     # one loss over 2B rows
    auto = build_model(load_config("digits-batchformer", shared_head=False, embed_dim=E), num_classes=5)[1]
    sep = build_model(load_config("digits-batchformer", module_loss="separate", embed_dim=E), num_classes=5)[1]
    assert auto.module_loss is not None and sep.module_loss is not None
    with pytest.raises(ValueError, match="module_loss must be one of auto, one, separate"):
        load_config("digits-batchformer", module_loss="two")
    with pytest.raises(ValueError, match="the baseline has no module half"):
        load_config("digits", module_loss="one")
