"""A small, fast CNN for the offline ``mini`` suite (28x28 grayscale; any size >= 8x8 works).

Three 3x3 conv-BN-ReLU stages (16, 48, 96 channels), 2x2 max-pooling after the first two, global average pooling.
About 0.05 M parameters (K = 10). Project construction (no counterpart in the paper), chosen so that a GReg step on CPU is cheap.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .base import OODNet, check_in_channels, init_conv_bn_linear


class SmallCNN(OODNet):
    def __init__(self, num_classes: int, *, in_channels: int = 1, extra_outputs: int = 0,
                 widths: tuple[int, int, int] = (16, 48, 96)):
        super().__init__()
        c = check_in_channels(in_channels)
        w1, w2, w3 = (int(v) for v in widths)
        self.conv1 = nn.Conv2d(c, w1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.conv2 = nn.Conv2d(w1, w2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w2)
        self.conv3 = nn.Conv2d(w2, w3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w3)
        self._make_head(w3, num_classes, extra_outputs)
        init_conv_bn_linear(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
