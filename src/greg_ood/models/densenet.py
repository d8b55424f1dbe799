"""DenseNet-BC (Huang et al. 2017) for 32x32 inputs, as in the GReg code's ``densenet101`` (a DenseNet-BC of depth 100,
growth 12, compression 0.5, bottleneck layers, no dropout; the paper calls it "DenseNet-101"): ~0.77 M parameters.
Global average pooling replaces the fixed 8x8 pool so other input sizes work too.

``densenet121`` wraps torchvision's ImageNet DenseNet-121 (growth 32, blocks 6-12-24-16), built with ``weights=None``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .base import OODNet, check_in_channels, init_conv_bn_linear


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, growth: int, dropout: float):
        super().__init__()
        inter = 4 * growth
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, inter, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter)
        self.conv2 = nn.Conv2d(inter, growth, 3, padding=1, bias=False)
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(F.relu(self.bn2(out)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return torch.cat([x, out], 1)


class _Transition(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetBC(OODNet):
    def __init__(self, num_classes: int, *, depth: int = 100, growth_rate: int = 12, reduction: float = 0.5,
                 dropout: float = 0.0, in_channels: int = 3, extra_outputs: int = 0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"depth must be 6n+4 (>= 10), got {depth}")
        n = (depth - 4) // 6  # bottleneck layers per dense block (16 for depth 100)
        c = 2 * growth_rate
        self.conv1 = nn.Conv2d(check_in_channels(in_channels), c, 3, padding=1, bias=False)
        stages = []
        for b in range(3):
            layers = []
            for _ in range(n):
                layers.append(_Bottleneck(c, growth_rate, dropout))
                c += growth_rate
            stages.append(nn.Sequential(*layers))
            if b < 2:
                c_out = int(math.floor(c * reduction))
                stages.append(_Transition(c, c_out))
                c = c_out
        self.dense = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self._make_head(c, num_classes, extra_outputs)
        init_conv_bn_linear(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.dense(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class DenseNet121(OODNet):
    """torchvision's DenseNet-121 layout (random init); ``features`` = its feature trunk + ReLU + global pool."""

    def __init__(self, num_classes: int, *, in_channels: int = 3, extra_outputs: int = 0, memory_efficient: bool = False):
        super().__init__()
        from .._torchvision_compat import import_torchvision

        tv = import_torchvision()
        net = tv.models.densenet121(weights=None, memory_efficient=memory_efficient)
        c = check_in_channels(in_channels)
        if c != 3:
            old = net.features.conv0
            net.features.conv0 = nn.Conv2d(c, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
            nn.init.kaiming_normal_(net.features.conv0.weight)
        self.trunk = net.features
        self._make_head(net.classifier.in_features, num_classes, extra_outputs)
        nn.init.zeros_(self.fc.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.trunk(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
