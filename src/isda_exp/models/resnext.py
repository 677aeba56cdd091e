"""ResNeXt-29 for CIFAR (Xie et al. 2017): 3 stages x 3 bottleneck blocks, 64-channel stem.

Stage s (0, 1, 2) has grouped width cardinality * base_width * 2^s and output 256 * 2^s
(widen factor 4); the stride-2 grouped 3x3 conv downsamples, 1x1 conv + BN projects the shortcut.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._init import init_cifar_weights
from ._registry import register_model


class ResNeXtBottleneck(nn.Module):
    """1x1 reduce -> grouped 3x3 (cardinality groups) -> 1x1 expand, post-activation."""

    def __init__(self, cin: int, cout: int, stride: int, cardinality: int, group_width: int):
        super().__init__()
        inner = cardinality * group_width
        self.reduce = nn.Sequential(nn.Conv2d(cin, inner, 1, bias=False), nn.BatchNorm2d(inner))
        self.grouped = nn.Sequential(
            nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=cardinality, bias=False),
            nn.BatchNorm2d(inner))
        self.expand = nn.Sequential(nn.Conv2d(inner, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.reduce(x), inplace=True)
        out = F.relu(self.grouped(out), inplace=True)
        return F.relu(self.expand(out) + self.shortcut(x), inplace=True)


class CifarResNeXt(nn.Module):
    """Feature extractor ResNeXt-depth (cardinality x base_width d); forward returns [N, 1024]."""

    def __init__(self, depth: int = 29, cardinality: int = 8, base_width: int = 64,
                 widen_factor: int = 4):
        super().__init__()
        if depth < 11 or (depth - 2) % 9:
            raise ValueError(f"ResNeXt depth must be 9n+2 (e.g. 29), got {depth}")
        n = (depth - 2) // 9
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True))
        blocks, cin = [], 64
        for stage in range(3):
            cout, group_width = 64 * widen_factor * 2 ** stage, base_width * 2 ** stage
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(ResNeXtBottleneck(cin, cout, stride, cardinality, group_width))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = cin
        init_cifar_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)


@register_model
def resnext29_8x64d(**kw) -> CifarResNeXt:
    return CifarResNeXt(depth=29, cardinality=8, base_width=64, **kw)
