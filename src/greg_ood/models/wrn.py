"""Wide ResNet (Zagoruyko & Komodakis 2016) in the pre-activation layout used by Outlier Exposure / energy_ood and
the GReg code's ``wrn40_2``: bias-free 3x3 convolutions, BN-ReLU before each convolution, a 1x1 projection shortcut
when the width or stride changes, final BN-ReLU and global average pooling. WRN-40-2 has ~2.24 M parameters (K = 10).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .base import OODNet, check_in_channels, init_conv_bn_linear


class _PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.dropout = float(dropout)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride=stride, padding=0, bias=False)
                         if (c_in != c_out or stride != 1) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        # with a projection the shortcut sees the pre-activated input (as in the OE/energy_ood WRN)
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return skip + self.conv2(out)


class WideResNet(OODNet):
    def __init__(self, num_classes: int, *, depth: int = 40, widen_factor: int = 2, dropout: float = 0.0,
                 in_channels: int = 3, extra_outputs: int = 0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"depth must be 6n+4 (>= 10), got {depth}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(check_in_channels(in_channels), widths[0], 3, padding=1, bias=False)
        blocks = []
        c = widths[0]
        for stage, stride in zip(range(1, 4), (1, 2, 2)):
            for i in range(n):
                blocks.append(_PreActBlock(c, widths[stage], stride if i == 0 else 1, dropout))
                c = widths[stage]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self._make_head(c, num_classes, extra_outputs)
        init_conv_bn_linear(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.conv1(x))
        x = F.relu(self.bn(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
