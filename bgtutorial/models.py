"""The retrieval network: backbone -> global pooling -> [batch module] -> linear embedding -> L2 norm.

The optional batch module (BatchFormer, BGFormer) sits between the pooled feature and the
embedding head, which is shared by the plain and the module stream (docs/method.md), unless
``shared_head=False`` gives the module stream a head of its own (an ablation). It only
acts in training, through ``augment(features, labels)``; at evaluation the forward path
never touches it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .rng import OwnStream, module_seed as derive_module_seed
from .utils import UserError

__all__ = ["RetrievalNet", "SmallCNN", "build_backbone", "load_glyph_weights", "GLYPH_WEIGHTS", "backbone_weights", "weights_record", "input_stats", "BACKBONES",
           "BATCH_MODULES", "POOLINGS", "HEAD_INITS", "make_batch_module"]

BACKBONES = ("smallcnn", "resnet18", "resnet34", "resnet50", "resnet101", "vit_s16")
#: timm model names (with the pretrained tag) behind the ViT backbones. Hyp-ViT calls
#: ``timm.create_model("vit_small_patch16_224", pretrained=True)`` (htdt/hyp_metric model.py
#: L13); in today's timm that name resolves to this tag: ViT-S/16 pre-trained on
#: ImageNet-21k and fine-tuned on ImageNet-1k (docs/recipes.md, tier 2).
TIMM_MODELS = {"vit_s16": "vit_small_patch16_224.augreg_in21k_ft_in1k"}
#: global pooling of a ResNet's last feature map: torchvision's average, or average + max
#: summed, as Kim et al.'s Proxy-Anchor code (net/resnet.py L144-145, L180-183)
POOLINGS = ("avg", "avgmax")
#: initialisation of the embedding head: PyTorch's default, Kaiming-normal (fan-out) with zero
#: bias (Proxy-Anchor, net/resnet.py L192-194), orthogonal with zero bias (Hyp-ViT, model.py L25-26)
HEAD_INITS = ("default", "kaiming_fanout", "orthogonal")


#: the glyph backbone's pretrained weights, shipped in the package (``python -m bgtutorial.pretrain --publish``
#: makes them, on characters disjoint from the retrieval set); the JSON beside them holds their sha256
GLYPH_WEIGHTS = Path(__file__).parent / "weights" / "glyph-smallcnn.pt"


class SmallCNN(nn.Module):
    """A 4-block CNN for the embedded glyphs, digits and smoke runs: (B, 3, H, W) -> (B, 8·width).

    The input is first standardised per image and channel (instance normalisation): the
    digits' ink and background colours are random, and this lets a small network learn
    shapes in a few CPU minutes instead of first spending epochs on colour invariance.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        blocks: list[nn.Module] = [nn.InstanceNorm2d(3)]
        for i in range(4):
            blocks += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(chans[i + 1]),
                       nn.ReLU(inplace=True)]
            if i < 3:
                blocks.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*blocks)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))    # global average pooling: (B, C)


def load_glyph_weights(net: SmallCNN, path: str | Path = GLYPH_WEIGHTS) -> SmallCNN:
    """Load the shipped glyph-pretrained weights into ``net`` (offline), after checking the file's sha256
    against the JSON beside it; return ``net``. The glyph backbone's ImageNet: see ``bgtutorial.pretrain``."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"the glyph backbone's weights {path} (or {meta_path.name}) are missing: reinstall "
                                "bgtutorial, or make them with `python -m bgtutorial.pretrain --publish`, or use "
                                "pretrained=false")
    fix = "reinstall bgtutorial, or make them again with `python -m bgtutorial.pretrain --publish`"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path} is not JSON ({type(err).__name__}): {fix}") from None
    expected = meta.get("sha256") if isinstance(meta, dict) else None
    if not (isinstance(expected, str) and len(expected) == 64):
        raise ValueError(f"{meta_path} holds no sha256 (a 64-digit hex string under \"sha256\"): {fix}")
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != expected:
        raise ValueError(f"{path} has sha256 {found[:12]}..., its JSON says {expected[:12]}...: the file is damaged or "
                         f"not the one the JSON describes; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        bad = [k for k, v in state.items() if not torch.isfinite(v).all()] if isinstance(state, dict) else []
        if bad:
            raise ValueError(f"weights {bad[0]} hold NaN or inf")
        net.load_state_dict(state)
    except Exception as err:      # a pickle weights_only refuses, a list, another network's shapes, NaN
        detail = " ".join(str(err).split())[:160] or type(err).__name__
        raise ValueError(f"{path} does not hold SmallCNN weights ({type(err).__name__}: {detail}): {fix}") from None
    return net


def weights_record(name: str, pretrained: bool) -> dict[str, str] | None:
    """What a run's backbone starts from, for its history: ``None`` from scratch; the shipped glyph
    weights' file name and sha256 (checked against the file when they are loaded); the torchvision or
    timm weights' name for the ImageNet backbones."""
    if not pretrained:
        return None
    if name == "smallcnn":
        meta = GLYPH_WEIGHTS.with_suffix(".json")
        sha = json.loads(meta.read_text())["sha256"] if meta.is_file() else "missing"
        return {"file": GLYPH_WEIGHTS.name, "sha256": sha}
    if name in TIMM_MODELS:
        return {"timm": TIMM_MODELS[name]}
    return {"torchvision": str(backbone_weights(name))}


def backbone_weights(name: str) -> "torchvision.models.WeightsEnum":
    """torchvision's default ImageNet weights enum for ``name`` (no download happens here)."""
    return torchvision.models.get_model_weights(name).DEFAULT


def input_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` that the backbone's pretrained weights expect (no download).

    Read from the checkpoint's own metadata: timm's pretrained config for the ViTs (0.5 for
    these, as Hyp-ViT's train.py L87-90 sets by hand), torchvision's weights transforms for the
    ResNets (ImageNet's). The from-scratch SmallCNN normalises its input itself: ImageNet's.
    """
    if name in TIMM_MODELS:
        import timm

        cfg = timm.models.get_pretrained_cfg(TIMM_MODELS[name])
        return tuple(cfg.mean), tuple(cfg.std)
    if name == "smallcnn":
        name = "resnet18"
    tf = backbone_weights(name).transforms()
    return tuple(tf.mean), tuple(tf.std)


class _AvgMaxPool(nn.Module):
    """(B, C, H, W) -> (B, C): global average plus global max pooling (Proxy-Anchor's code)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))


@contextlib.contextmanager
def _weights_download(name: str) -> Iterator[None]:
    """Turn a failed download of pretrained weights (offline, a proxy, a 404) into a :class:`UserError`
    that says where to place the file by hand, or to train without them."""
    try:
        yield
    except OSError as err:                        # URLError, HTTPError, the Hub's connection errors
        reason = " ".join(str(getattr(err, "reason", None) or err).split())[:160]
        if name in TIMM_MODELS:
            where = (f"run once on a machine that is online (timm.create_model({TIMM_MODELS[name]!r}, pretrained=True)) "
                     "and copy its Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME/hub) to this machine")
        else:
            url = backbone_weights(name).url
            target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
            where = f"download {url} elsewhere and place it at {target}"
        raise UserError(f"could not download the pretrained weights of {name} ({type(err).__name__}: {reason}): "
                        f"{where}, or pass --pretrained false (random initial weights)") from None


def build_backbone(name: str, pretrained: bool = True, pooling: str = "avg") -> tuple[nn.Module, int]:
    """A backbone that maps images (B, 3, H, W) to pooled features (B, D); returns it and D.

    ResNets come from torchvision with their real weights API (``weights=DEFAULT`` when
    ``pretrained``; the download then happens once, into torch's cache); the SmallCNN's pretrained
    weights are the glyph backbone's, shipped in the package (:func:`load_glyph_weights`). ``pooling``
    ("avg" or "avgmax", see :data:`POOLINGS`) applies to the ResNets only.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if pooling != "avg" and not name.startswith("resnet"):
        raise ValueError(f"pooling={pooling!r} is for the ResNet backbones; {name} pools on its own (use 'avg')")
    if name == "smallcnn":     # pretrained: the shipped glyph weights (no download)
        net = SmallCNN()
        return (load_glyph_weights(net) if pretrained else net), net.out_dim
    if name in TIMM_MODELS:
        import timm  # weights come through timm's pretrained API (a download only when pretrained=True)

        with _weights_download(name):
            net = timm.create_model(TIMM_MODELS[name], pretrained=pretrained, num_classes=0)   # (B, 384) CLS feature
        return net, net.num_features
    with _weights_download(name):
        net = torchvision.models.get_model(name, weights=backbone_weights(name) if pretrained else None)
    dim = net.fc.in_features
    net.fc = nn.Identity()     # torchvision's ResNet already pools globally before fc
    if pooling == "avgmax":
        net.avgpool = _AvgMaxPool()     # torchvision flattens after avgpool: (B, C) passes through
    return net, dim


def _batchformer(dim: int, **kwargs) -> nn.Module:
    from .batchformer import BatchFormer
    return BatchFormer(dim, **kwargs)


def _bgformer(dim: int, **kwargs) -> nn.Module:
    from .bgformer import BGFormer
    return BGFormer(dim, **kwargs)


#: The one list of batch modules: name -> constructor ``(dim, **kwargs)`` (None: no module).
#: The config's ``batch_module``, the preset suffixes and the experiments' methods all read it.
BATCH_MODULES = {"none": None, "batchformer": _batchformer, "bgformer": _bgformer}


def make_batch_module(kind: str | nn.Module | None, dim: int, **kwargs) -> nn.Module | None:
    """``None``/"none", "batchformer", "bgformer", or a ready module with ``augment(x, y)``."""
    if kind is None:
        return None
    if isinstance(kind, nn.Module):
        if not hasattr(kind, "augment"):
            raise TypeError("a batch module must define augment(features, labels)")
        return kind
    if kind not in BATCH_MODULES:
        raise ValueError(f"unknown batch_module {kind!r}; choose one of {', '.join(BATCH_MODULES)}")
    build = BATCH_MODULES[kind]
    return None if build is None else build(dim, **kwargs)


class RetrievalNet(nn.Module):
    """Embedding network for deep metric learning.

    Args:
        backbone: one of :data:`BACKBONES`.
        embed_dim: embedding size (512 in the CUB-200 set-up).
        pretrained: load ImageNet weights (ResNets only).
        batch_module: ``None``, ``"batchformer"``, ``"bgformer"`` or a module with ``augment``.
        batch_module_kwargs: constructor options of the batch module.
        pooling: "avg" or "avgmax" (ResNets; :data:`POOLINGS`).
        head_init: "default", "kaiming_fanout" or "orthogonal" (:data:`HEAD_INITS`).
        normalize: L2-normalise embeddings in training too (True for Proxy-Anchor / MS). With
            False (hyperbolic loss, which maps raw embeddings into the Poincaré ball itself) the
            training embeddings are raw. ``forward`` in eval mode always returns L2-normalised
            embeddings (cosine ranking), but a hyperbolic run is not scored on them:
            ``train.evaluate`` and ``experiments.embed_run``/``head_metrics`` rank the raw head
            output mapped into the ball by Poincaré distance, and the backbone feature by cosine,
            as Hyp-ViT does.
        module_seed: the run's seed, from which the batch module's own random stream is derived
            (:mod:`bgtutorial.rng`): the module is initialised, and its dropout drawn, from that stream,
            so the global generator (head, proxies, everything built or drawn later) is where it would
            be without a module and methods compared at a seed start from the same head. ``None``:
            derived from ``torch.initial_seed()`` (the seed ``torch.manual_seed`` last set).
        shared_head: True (BatchFormer's design): one head embeds the plain and the module
            stream. False: the module stream (the second half of the doubled batch) goes through
            its own head ``module_head`` (same shape and initialisation rule), which the test-time
            forward never uses; an ablation that shows what sharing buys (notebook 02).

    ``forward(images)`` -> embeddings (B, E), L2-normalised. In training,
    ``forward(images, labels)`` -> ``(embeddings, labels)`` where a batch module may have
    doubled the batch (2B, E), (2B,).
    """

    def __init__(self, backbone: str = "resnet50", embed_dim: int = 512, pretrained: bool = True,
                 batch_module: str | nn.Module | None = None, batch_module_kwargs: dict | None = None,
                 normalize: bool = True, pooling: str = "avg", head_init: str = "default",
                 shared_head: bool = True, module_seed: int | None = None) -> None:
        super().__init__()
        self.backbone, self.feat_dim = build_backbone(backbone, pretrained, pooling)
        #: the batch module's own random stream (None without a module): its init and dropout draw from it
        self.module_stream = None
        self.batch_module = None
        if batch_module is not None and batch_module != "none":
            seed = torch.initial_seed() % 2**63 if module_seed is None else module_seed
            self.module_stream = OwnStream(derive_module_seed(seed))
            with self.module_stream.active():
                self.batch_module = make_batch_module(batch_module, self.feat_dim, **(batch_module_kwargs or {}))
        if head_init not in HEAD_INITS:
            raise ValueError(f"unknown head_init {head_init!r}; choose one of {', '.join(HEAD_INITS)}")
        self.head = self._new_head(embed_dim, head_init)
        #: the module stream's own head when ``shared_head=False`` (else None: ``head`` serves both)
        self.module_head = None if shared_head else self._new_head(embed_dim, head_init)
        self.embed_dim, self.normalize = embed_dim, normalize
        #: optional ``(features, labels) -> (features, labels)`` applied in training before the
        #: batch module, e.g. :class:`bgtutorial.distributed.GatherBatch` (global batch under DDP)
        self.gather = None

    def _new_head(self, embed_dim: int, head_init: str) -> nn.Linear:
        head = nn.Linear(self.feat_dim, embed_dim)
        if head_init == "kaiming_fanout":
            nn.init.kaiming_normal_(head.weight, mode="fan_out")
            nn.init.zeros_(head.bias)
        elif head_init == "orthogonal":
            nn.init.orthogonal_(head.weight)
            nn.init.zeros_(head.bias)
        return head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, D)."""
        return self.backbone(images)

    def embed(self, features: torch.Tensor, head: str = "plain") -> torch.Tensor:
        """Head: linear map and L2 normalisation, (N, D) -> (N, E) (raw in training when not ``normalize``).

        ``head="module"`` uses the module stream's own head (``shared_head=False`` only).
        """
        if head not in ("plain", "module"):
            raise ValueError(f"head must be 'plain' or 'module', got {head!r}")
        if head == "module" and self.module_head is None:
            raise ValueError("this network shares one head between the streams (shared_head=True): "
                             "there is no module head; use head='plain'")
        e = (self.head if head == "plain" else self.module_head)(features).float()
        return e if (self.training and not self.normalize) else F.normalize(e, dim=1)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        f = self.features(images)                                    # (B, D)
        if labels is None:
            return self.embed(f)                                     # test time: no batch module
        if self.training and self.gather is not None:
            f, labels = self.gather(f, labels)                       # (W·B, D): the global batch
        b = f.shape[0]
        if self.training and self.batch_module is not None:
            with self.module_stream.active(f.device):                # the module's own random stream
                f, labels = self.batch_module.augment(f, labels)     # (2B, D), (2B,)
        if self.module_head is None or f.shape[0] == b:
            return self.embed(f), labels                             # one head for both halves
        # unshared: plain half through the test-time head, module half through its own head
        return torch.cat([self.embed(f[:b]), self.embed(f[b:], head="module")]), labels   # (2B, E)
