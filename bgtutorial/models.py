"""The retrieval network: backbone -> global pooling -> [batch module] -> linear embedding -> L2 norm.

The optional batch module (BatchFormer, BGFormer) sits between the pooled feature and the
embedding head, which is shared by the plain and the module stream (METHOD.md). It only
acts in training, through ``augment(features, labels)``; at evaluation the forward path
never touches it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = ["RetrievalNet", "SmallCNN", "build_backbone", "backbone_weights", "BACKBONES", "make_batch_module"]

BACKBONES = ("smallcnn", "resnet18", "resnet34", "resnet50", "resnet101", "vit_s16")
#: timm model names (with the pretrained tag) behind the ViT backbones: ViT-S/16 pretrained on
#: ImageNet-21k, the backbone of Hyp-ViT and of BGFormer's reported CUB-200 results (METHOD.md)
TIMM_MODELS = {"vit_s16": "vit_small_patch16_224.augreg_in21k"}


class SmallCNN(nn.Module):
    """A 4-block CNN for the embedded digits and smoke runs: (B, 3, H, W) -> (B, 8·width).

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


def backbone_weights(name: str) -> "torchvision.models.WeightsEnum":
    """torchvision's default ImageNet weights enum for ``name`` (no download happens here)."""
    return torchvision.models.get_model_weights(name).DEFAULT


def build_backbone(name: str, pretrained: bool = True) -> tuple[nn.Module, int]:
    """A backbone that maps images (B, 3, H, W) to pooled features (B, D); returns it and D.

    ResNets come from torchvision with their real weights API (``weights=DEFAULT`` when
    ``pretrained``; the download then happens once, into torch's cache).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if name == "smallcnn":
        net = SmallCNN()
        return net, net.out_dim
    if name in TIMM_MODELS:
        import timm  # weights come through timm's pretrained API (a download only when pretrained=True)

        net = timm.create_model(TIMM_MODELS[name], pretrained=pretrained, num_classes=0)   # (B, 384) CLS feature
        return net, net.num_features
    net = torchvision.models.get_model(name, weights=backbone_weights(name) if pretrained else None)
    dim = net.fc.in_features
    net.fc = nn.Identity()     # torchvision's ResNet already pools globally before fc
    return net, dim


def make_batch_module(kind: str | nn.Module | None, dim: int, **kwargs) -> nn.Module | None:
    """``None``/"none", "batchformer", "bgformer", or a ready module with ``augment(x, y)``."""
    if kind is None or kind == "none":
        return None
    if isinstance(kind, nn.Module):
        if not hasattr(kind, "augment"):
            raise TypeError("a batch module must define augment(features, labels)")
        return kind
    if kind == "batchformer":
        from .batchformer import BatchFormer
        return BatchFormer(dim, **kwargs)
    if kind == "bgformer":
        from .bgformer import BGFormer
        return BGFormer(dim, **kwargs)
    raise ValueError(f"unknown batch_module {kind!r}; choose 'none', 'batchformer' or 'bgformer'")


class RetrievalNet(nn.Module):
    """Embedding network for deep metric learning.

    Args:
        backbone: one of :data:`BACKBONES`.
        embed_dim: embedding size (512 in the CUB-200 set-up).
        pretrained: load ImageNet weights (ResNets only).
        batch_module: ``None``, ``"batchformer"``, ``"bgformer"`` or a module with ``augment``.
        batch_module_kwargs: constructor options of the batch module.
        normalize: L2-normalise embeddings in training too (True for Proxy-Anchor / MS). With
            False (hyperbolic loss, which maps raw embeddings into the Poincaré ball itself) the
            training embeddings are raw; at evaluation they are always L2-normalised, so
            retrieval ranks by cosine similarity (our reading for the hyperbolic tier).

    ``forward(images)`` -> embeddings (B, E), L2-normalised. In training,
    ``forward(images, labels)`` -> ``(embeddings, labels)`` where a batch module may have
    doubled the batch (2B, E), (2B,).
    """

    def __init__(self, backbone: str = "resnet50", embed_dim: int = 512, pretrained: bool = True,
                 batch_module: str | nn.Module | None = None, batch_module_kwargs: dict | None = None,
                 normalize: bool = True) -> None:
        super().__init__()
        self.backbone, self.feat_dim = build_backbone(backbone, pretrained)
        self.batch_module = make_batch_module(batch_module, self.feat_dim, **(batch_module_kwargs or {}))
        self.head = nn.Linear(self.feat_dim, embed_dim)
        self.embed_dim, self.normalize = embed_dim, normalize
        #: optional ``(features, labels) -> (features, labels)`` applied in training before the
        #: batch module, e.g. :class:`bgtutorial.distributed.GatherBatch` (global batch under DDP)
        self.gather = None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, D)."""
        return self.backbone(images)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Shared head: linear map and L2 normalisation, (N, D) -> (N, E) (raw in training when not ``normalize``)."""
        e = self.head(features).float()
        return e if (self.training and not self.normalize) else F.normalize(e, dim=1)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        f = self.features(images)                                    # (B, D)
        if labels is None:
            return self.embed(f)                                     # test time: no batch module
        if self.training and self.gather is not None:
            f, labels = self.gather(f, labels)                       # (W·B, D): the global batch
        if self.training and self.batch_module is not None:
            f, labels = self.batch_module.augment(f, labels)         # (2B, D), (2B,)
        return self.embed(f), labels
