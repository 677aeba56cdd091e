"""Wide-ResNet (Zagoruyko & Komodakis 2016), pre-activation, for CIFAR.

depth = 6n + 4; stages of 16k/32k/64k channels (k = widen_factor) after a 16-channel stem.
Block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, with a 1x1 conv shortcut when the shape changes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._init import init_cifar_weights
from ._registry import register_model


class PreActBlock(nn.Module):
    """Pre-activation wide basic block; dropout (torch's global RNG) sits between the two convs."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        # the projection sees the activated input, the identity the raw one (as in the WRN paper code)
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = F.relu(self.bn2(self.conv1(pre)))
        out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + skip


class WideResNet(nn.Module):
    """Feature extractor WRN-depth-widen_factor; forward returns [N, 64 * widen_factor]."""

    def __init__(self, depth: int, widen_factor: int, drop_rate: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"Wide-ResNet depth must be 6n+4 (e.g. 16, 28), got {depth}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        blocks, cin = [], 16
        for stage, cout in enumerate(widths):
            for i in range(n):
                blocks.append(PreActBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1, drop_rate))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.feature_dim = cin
        init_cifar_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@register_model
def wrn16_8(drop_rate: float = 0.0, **kw) -> WideResNet:
    return WideResNet(depth=16, widen_factor=8, drop_rate=drop_rate, **kw)


@register_model
def wrn28_10(drop_rate: float = 0.0, **kw) -> WideResNet:
    return WideResNet(depth=28, widen_factor=10, drop_rate=drop_rate, **kw)
