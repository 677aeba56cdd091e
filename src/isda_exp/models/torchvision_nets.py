"""ImageNet models from torchvision (Table 4): ResNet-50/101/152, ResNeXt-50 32x4d, DenseNet-121.

torchvision's own architectures (no pretrained weights, torchvision's initialisation), with the
final classifier (`fc`, or DenseNet's `classifier`) replaced by the identity: forward returns the
pooled features [N, feature_dim] (2048; DenseNet-121: 1024) and the runner adds its own
Linear(feature_dim, classes), so parameter counts with a 1000-class head equal torchvision's.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._registry import register_model


class TorchvisionFeatures(nn.Module):
    """A torchvision classifier cut before its last Linear layer."""

    input_size = 224  # the image size of the recipe (FLOP estimates use it)

    def __init__(self, arch: str):
        super().__init__()
        import torchvision  # here: importing torchvision takes ~3 s, which a CIFAR run never needs

        net = getattr(torchvision.models, arch)(weights=None)
        head = "fc" if hasattr(net, "fc") else "classifier"
        self.feature_dim = getattr(net, head).in_features
        setattr(net, head, nn.Identity())
        self.body = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_model
def resnet50() -> TorchvisionFeatures:
    return TorchvisionFeatures("resnet50")


@register_model
def resnet101() -> TorchvisionFeatures:
    return TorchvisionFeatures("resnet101")


@register_model
def resnet152() -> TorchvisionFeatures:
    return TorchvisionFeatures("resnet152")


@register_model
def resnext50_32x4d() -> TorchvisionFeatures:
    return TorchvisionFeatures("resnext50_32x4d")


@register_model
def densenet121() -> TorchvisionFeatures:
    return TorchvisionFeatures("densenet121")
