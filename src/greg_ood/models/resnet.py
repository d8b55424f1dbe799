"""ResNet-18 (He et al. 2016), BasicBlock [2, 2, 2, 2], widths 64-512, global average pooling, 512-d features.

``stem="cifar"`` (default): 3x3 stride-1 convolution, no max-pool (the CIFAR standard; ~11.17 M parameters, K = 10).
``stem="imagenet"``: 7x7 stride-2 convolution + 3x3 stride-2 max-pool, the layout the official GReg scripts ran on
32x32 CIFAR images (docs/method.md §8 #16).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .base import OODNet, check_in_channels, init_conv_bn_linear


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet18(OODNet):
    def __init__(self, num_classes: int, *, stem: str = "cifar", in_channels: int = 3, extra_outputs: int = 0):
        super().__init__()
        c = check_in_channels(in_channels)
        if stem == "cifar":
            self.conv1 = nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False)
            self.pool = None
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(c, 64, 7, stride=2, padding=3, bias=False)
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.stem = stem
        self.bn1 = nn.BatchNorm2d(64)
        layers, c_in = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(c_in, width, stride), _BasicBlock(width, width, 1)]
            c_in = width
        self.layers = nn.Sequential(*layers)
        self._make_head(512, num_classes, extra_outputs)
        init_conv_bn_linear(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.pool is not None:
            x = self.pool(x)
        x = self.layers(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
