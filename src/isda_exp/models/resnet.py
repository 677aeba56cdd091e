"""CIFAR ResNets of He et al. (2016): ResNet-32/110 and SE-ResNet-110 (Hu et al. 2018).

Three stages of 16/32/64 channels with n basic blocks each (depth = 6n + 2); a stride-2 block
changing width uses a projection shortcut (1x1 conv + BN). SE blocks rescale the residual
branch's channels (reduction 16) before the addition. drop_rate > 0 puts dropout between the two
convolutions of each block, after the first BN-ReLU (the ISDA authors' "+ Dropout" placement, as in
Wide-ResNet); it has no parameters and uses torch's global RNG.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._init import init_cifar_weights
from ._registry import register_model


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class SqueezeExcite(nn.Module):
    """Channel gate: global pool -> FC (C/r) -> ReLU -> FC (C) -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-(dropout)-conv3x3-BN (+ optional SE) + shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, se_reduction: int | None = None,
                 drop_rate: float = 0.0):
        super().__init__()
        self.drop_rate = drop_rate
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout, se_reduction) if se_reduction else nn.Identity()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if self.drop_rate:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Feature extractor: stem conv, 3 stages, global average pool -> [N, 64 * width_mult]."""

    def __init__(self, depth: int, se_reduction: int | None = None, base_width: int = 16,
                 drop_rate: float = 0.0):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (e.g. 32, 110), got {depth}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        n = (depth - 2) // 6
        widths = [base_width, 2 * base_width, 4 * base_width]
        self.stem = nn.Sequential(_conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, cin = [], widths[0]
        for stage, cout in enumerate(widths):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride, se_reduction, drop_rate))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = cin
        init_cifar_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.blocks(self.stem(x))), 1)


@register_model
def resnet32(**kw) -> CifarResNet:
    return CifarResNet(depth=32, **kw)


@register_model
def resnet110(**kw) -> CifarResNet:
    return CifarResNet(depth=110, **kw)


@register_model
def se_resnet110(se_reduction: int = 16, **kw) -> CifarResNet:
    return CifarResNet(depth=110, se_reduction=se_reduction, **kw)
