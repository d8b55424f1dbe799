"""The interface every classifier in :mod:`greg_ood.models` follows.

* ``features(x)`` -> penultimate vector ``h(x)`` (post-ReLU, globally average-pooled, shape ``[N, feature_dim]``);
* ``head(z)``     -> logits (``[N, num_classes + extra_outputs]``), one linear layer named ``fc``;
* ``forward(x)``  =  ``head(features(x))``.

``num_classes`` is K (the ID classes); ``extra_outputs`` counts additional logits (1 for the DOS absent class).
"""
from __future__ import annotations

import torch
from torch import nn


class OODNet(nn.Module):
    """Base class: subclasses implement :meth:`features` and create ``self.fc`` via :meth:`_make_head`."""

    feature_dim: int
    num_classes: int
    extra_outputs: int

    def _make_head(self, feature_dim: int, num_classes: int, extra_outputs: int) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if int(extra_outputs) < 0:
            raise ValueError(f"extra_outputs must be >= 0, got {extra_outputs}")
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.extra_outputs = int(extra_outputs)
        self.fc = nn.Linear(self.feature_dim, self.num_classes + self.extra_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def init_conv_bn_linear(module: nn.Module) -> None:
    """He (fan-out) init for convolutions, unit/zero BatchNorm affine, zero linear bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def check_in_channels(in_channels: int) -> int:
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    return int(in_channels)
