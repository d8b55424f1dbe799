"""Model registry. Every model exposes ``features(x)`` (penultimate, post-ReLU, pooled), ``head(z)`` (logits),
``forward(x) = head(features(x))`` and the attributes ``feature_dim``, ``num_classes`` (K) and ``extra_outputs``.

>>> from greg_ood import models
>>> m = models.build("wrn40_2", 10)             # 2.24 M parameters
>>> m = models.build("resnet18", 10, stem="imagenet", extra_outputs=1)   # DOS: K + 1 outputs

| name | architecture | params (K = 10) | notes |
|---|---|---|---|
| ``small_cnn`` | 3 conv-BN-ReLU stages | ~0.05 M | offline ``mini`` suite (28x28x1) |
| ``wrn40_2`` | pre-activation WRN-40-2 | ~2.24 M | ``dropout`` (default 0), ``depth``, ``widen_factor`` |
| ``densenet100`` / ``densenet101`` | DenseNet-BC, depth 100, k = 12 | ~0.77 M | the paper's "DenseNet-101" |
| ``resnet18`` | ResNet-18 | ~11.17 M (cifar stem) | ``stem="cifar"`` (default) \\| ``"imagenet"`` |
| ``densenet121`` | torchvision DenseNet-121 | ~6.96 M | ImageNet suite, ``weights=None`` |
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..archs import ARCHS
from .base import OODNet
from .densenet import DenseNet121, DenseNetBC
from .resnet import ResNet18
from .small_cnn import SmallCNN
from .wrn import WideResNet

__all__ = ["OODNet", "build", "names", "count_parameters", "REGISTRY"]


def _wrn40_2(num_classes: int, **kw) -> nn.Module:
    kw.setdefault("depth", 40)
    kw.setdefault("widen_factor", 2)
    return WideResNet(num_classes, **kw)


def _densenet100(num_classes: int, **kw) -> nn.Module:
    kw.setdefault("depth", 100)
    kw.setdefault("growth_rate", 12)
    return DenseNetBC(num_classes, **kw)


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "wrn40_2": _wrn40_2,
    "densenet100": _densenet100,
    "densenet101": _densenet100,  # alias: the paper's / official code's name for DenseNet-BC-100
    "resnet18": ResNet18,
    "densenet121": DenseNet121,
}


if set(REGISTRY) != set(ARCHS):  # the names are declared once, in greg_ood.archs
    raise ImportError(f"models.REGISTRY builds {sorted(REGISTRY)} but greg_ood.archs declares {sorted(ARCHS)}")


def names() -> list[str]:
    """Registered architecture names (aliases included)."""
    return list(REGISTRY)


def build(name: str, num_classes: int, *, in_channels: int = 3, extra_outputs: int = 0, **kw) -> OODNet:
    """Build architecture ``name`` with ``num_classes + extra_outputs`` logits; ``kw`` goes to the constructor.

    Raises ``ValueError`` naming ``name`` for an unknown architecture and naming the option for an unknown keyword.
    """
    if name not in REGISTRY:
        raise ValueError(f"name: unknown architecture {name!r}; choose one of {names()}")
    try:
        return REGISTRY[name](num_classes, in_channels=in_channels, extra_outputs=extra_outputs, **kw)
    except TypeError as e:  # unknown keyword -> a ValueError that names it
        raise ValueError(f"{name}: bad option(s) {sorted(kw)}: {e}") from None


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
