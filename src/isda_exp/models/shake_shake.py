"""Shake-Shake 26 for CIFAR (Gastaldi 2017), the "Shake-Shake-Image" variant.

26 = 2 + 6 * 4: a 16-channel stem, 3 stages of 4 blocks with widths w/2w/4w (2 x w d).
Each block sums two residual branches (ReLU-conv-BN-ReLU-conv-BN) mixed with a random
per-image weight alpha in the forward pass and an independent per-image beta in the backward
pass; at evaluation both weights are 0.5. A shape change uses Gastaldi's shortcut: two 1x1
convs on strided samples of the activated input (the second shifted by one pixel), concatenated, BN.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._init import init_cifar_weights
from ._registry import register_model


class ShakeShakeMix(torch.autograd.Function):
    """out = alpha * a + (1 - alpha) * b forward; the gradients are scaled by beta and 1 - beta."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor):
        ctx.save_for_backward(beta)
        return alpha * a + (1 - alpha) * b

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (beta,) = ctx.saved_tensors
        return beta * grad, (1 - beta) * grad, None, None


def shake_shake(a: torch.Tensor, b: torch.Tensor, training: bool) -> torch.Tensor:
    """Training: per-image alpha, beta ~ U[0, 1] from torch's global RNG; eval: the plain average."""
    if not training:
        return 0.5 * (a + b)
    shape = (a.shape[0],) + (1,) * (a.dim() - 1)
    alpha = torch.rand(shape, device=a.device, dtype=a.dtype)
    beta = torch.rand(shape, device=a.device, dtype=a.dtype)
    return ShakeShakeMix.apply(a, b, alpha, beta)


class _Branch(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(
            nn.ReLU(inplace=False),  # the input is also the shortcut: never overwrite it
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))


class ShiftedShortcut(nn.Module):
    """ReLU, then two half-width 1x1 convs on x[::s, ::s] and on x shifted by one pixel; concat; BN."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cout % 2:
            raise ValueError(f"shake-shake shortcut needs an even width, got {cout}")
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        s = self.stride
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv1(x[:, :, ::s, ::s]), self.conv2(shifted[:, :, ::s, ::s])], 1))


class ShakeBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.branch1, self.branch2 = _Branch(cin, cout, stride), _Branch(cin, cout, stride)
        self.shortcut = nn.Identity() if (stride == 1 and cin == cout) else ShiftedShortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + shake_shake(self.branch1(x), self.branch2(x), self.training)


class ShakeShakeNet(nn.Module):
    """Feature extractor Shake-Shake depth 2 x base_width d; forward returns [N, 4 * base_width]."""

    def __init__(self, depth: int = 26, base_width: int = 32):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"Shake-Shake depth must be 6n+2 (e.g. 26), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        blocks, cin = [], 16
        for stage in range(3):
            cout = base_width * 2 ** stage
            for i in range(n):
                blocks.append(ShakeBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = cin
        init_cifar_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.blocks(self.stem(x)))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@register_model
def shake26_2x32d(**kw) -> ShakeShakeNet:
    return ShakeShakeNet(depth=26, base_width=32, **kw)


@register_model
def shake26_2x112d(**kw) -> ShakeShakeNet:
    return ShakeShakeNet(depth=26, base_width=112, **kw)
