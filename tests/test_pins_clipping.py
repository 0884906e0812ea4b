"""Gradient clipping reaches every parameter group it claims to (train._clip_gradients: "the network and
the proxies"): the backbone, the head, the batch module, the module stream's own head, the proxies and the
module stream's own proxies. A clip far below Adam's eps (1e-8) stalls every update (a step then moves a
weight by about lr·1e-5, the proxies at their larger rate too), while without it each group moves by about
its learning rate per step."""

from bgtutorial.checkpoint import load_checkpoint
from bgtutorial.config import load_config
from bgtutorial.data.splits import build_splits
from bgtutorial.train import build_model, train
from bgtutorial.utils import seed_everything

TINY = dict(views=1, epochs=1, batch_size=20, m=4, steps_per_epoch=2, eval_nmi=False, progress=False, embed_dim=16,
            weight_decay=0.0, proxy_weight_decay=0.0, batch_module="batchformer", shared_head=False)
GROUPS = ("backbone.", "head.", "batch_module.", "module_head.", "loss.", "module_loss.")


def _moves(tmp_path, name, **clip):
    """Largest change of each parameter group over one short run (starting weights rebuilt with the seed)."""
    cfg = load_config("digits", out=str(tmp_path / name), **TINY, **clip)
    seed_everything(cfg.seed)
    train_ds, _, _ = build_splits(cfg)
    model, loss = build_model(cfg, num_classes=len(set(train_ds.targets)))
    start = {**{n: p.detach().clone() for n, p in model.named_parameters()},
             **{"loss#" + n: p.detach().clone() for n, p in loss.named_parameters()}}
    train(cfg)
    ck = load_checkpoint(tmp_path / name / "last.pt")
    end = {**ck["model"], **{"loss#" + n: v for n, v in ck["loss"].items()}}
    moves = {}
    for n, p in start.items():
        group = next(g for g in GROUPS if n.removeprefix("loss#").startswith(g))
        moves[group] = max(moves.get(group, 0.0), float((end[n] - p).abs().max()))
    return moves


def test_clipping_reaches_the_network_the_module_and_both_sets_of_proxies(tmp_path):
    free = _moves(tmp_path, "free")
    assert set(free) == set(GROUPS) and all(free[g] > 1e-4 for g in GROUPS), free
    for clip in ({"clip_grad_value": 1e-13}, {"clip_grad_norm": 1e-13}):
        clipped = _moves(tmp_path, next(iter(clip)), **clip)
        assert all(clipped[g] < 1e-3 * free[g] for g in GROUPS), (clip, sorted(clipped.items()))   # proxies: larger lr
