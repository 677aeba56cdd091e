"""DenseNet-BC for CIFAR (Huang et al. 2017).

Stem conv to 2k channels; 3 dense blocks of n = (depth - 4) / 6 bottleneck layers
(BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to k, concatenated); transitions BN-ReLU-1x1 conv
(x compression) then 2x2 average pool; final BN-ReLU and global pool.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from ._init import init_cifar_weights
from ._registry import register_model


class DenseLayer(nn.Module):
    """Bottleneck layer producing growth_rate new channels from all previous ones."""

    def __init__(self, cin: int, growth_rate: int, drop_rate: float, memory_efficient: bool):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate, self.memory_efficient = drop_rate, memory_efficient

    def _bottleneck(self, *features: torch.Tensor) -> torch.Tensor:
        return self.conv1(F.relu(self.bn1(torch.cat(features, 1))))

    def _bottleneck_batch_stats(self, *features: torch.Tensor) -> torch.Tensor:
        """As _bottleneck in training mode, but leaves bn1's running statistics alone.

        The checkpoint runs this twice per step (forward, and again in backward), so it must not
        update buffers; `_track_bn1` does that once per step instead.
        """
        bn = self.bn1
        x = F.batch_norm(torch.cat(features, 1), None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        return self.conv1(F.relu(x))

    @torch.no_grad()
    def _track_bn1(self, features: list[torch.Tensor]) -> None:
        """bn1's running-statistics update of one training step, from per-input channel stats.

        Channels of the concatenation are the inputs' channels side by side, so per-channel mean
        and unbiased variance need no concatenation.
        """
        bn = self.bn1
        mean = torch.cat([f.mean(dim=(0, 2, 3)) for f in features]).float()
        var = torch.cat([f.var(dim=(0, 2, 3), unbiased=True) for f in features]).float()
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(var.to(bn.running_var.dtype), factor)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and self.training and features[0].requires_grad:
            # recompute concat+BN+1x1 in backward: the concatenation is what dominates memory
            if self.bn1.track_running_stats:
                self._track_bn1(features)
            out = cp.checkpoint(self._bottleneck_batch_stats, *features, use_reentrant=False)
        else:
            out = self._bottleneck(*features)
        out = self.conv2(F.relu(self.bn2(out)))
        return F.dropout(out, p=self.drop_rate, training=self.training)


class DenseBlock(nn.Module):
    def __init__(self, n: int, cin: int, growth_rate: int, drop_rate: float, memory_efficient: bool):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(cin + i * growth_rate, growth_rate, drop_rate, memory_efficient) for i in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


class DenseNetBC(nn.Module):
    """Feature extractor DenseNet-BC-depth-growth_rate; forward returns [N, feature_dim].

    memory_efficient=True checkpoints each layer's concatenation (slower, far less memory).
    """

    def __init__(self, depth: int, growth_rate: int, compression: float = 0.5, drop_rate: float = 0.0,
                 memory_efficient: bool = False):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4 (e.g. 100, 190), got {depth}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        n = (depth - 4) // 6
        channels = 2 * growth_rate
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
        for i in range(3):
            layers.append(DenseBlock(n, channels, growth_rate, drop_rate, memory_efficient))
            channels += n * growth_rate
            if i < 2:
                out = int(math.floor(channels * compression))
                layers.append(Transition(channels, out))
                channels = out
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels
        init_cifar_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)


@register_model
def densenet_bc100_12(**kw) -> DenseNetBC:
    return DenseNetBC(depth=100, growth_rate=12, **kw)


@register_model
def densenet_bc190_40(**kw) -> DenseNetBC:
    return DenseNetBC(depth=190, growth_rate=40, **kw)
