"""ImageNet models from torchvision (Table 4 and the authors' released checkpoints): ResNet-50/101/
152, ResNeXt-50 32x4d, ResNeXt-101 32x8d, DenseNet-121 and DenseNet-BC-265.

torchvision's own architectures (torchvision's initialisation; pretrained weights through
model.pretrained, isda_exp.models.pretrained), with the final classifier (`fc`, or DenseNet's
`classifier`) replaced by the identity: forward returns the pooled features [N, feature_dim]
(2048; DenseNet-121: 1024) and the runner adds its own Linear(feature_dim, classes), so parameter
counts with a 1000-class head equal torchvision's. DenseNet-BC-265 (growth 32, blocks 6-12-64-48,
64 stem channels) has no torchvision builder or weights: it is torchvision's DenseNet class with
the block sizes of the authors' released model.
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

        if arch == "densenet265":
            net = torchvision.models.DenseNet(32, (6, 12, 64, 48), 64)
        else:
            net = getattr(torchvision.models, arch)(weights=None)
        head = "fc" if hasattr(net, "fc") else "classifier"
        self.arch, self.head_names = arch, (head,)  # the classifier's name in a full checkpoint
        self.feature_dim = getattr(net, head).in_features
        setattr(net, head, nn.Identity())
        self.body = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def _weights(self, name: str):
        """torchvision's weights enum entry `name` (IMAGENET1K_V2, DEFAULT) of this architecture."""
        import torchvision

        from ..errors import UserError

        try:
            return torchvision.models.get_model_weights(self.arch)[name]
        except (KeyError, ValueError):
            try:
                names = [w.name for w in torchvision.models.get_model_weights(self.arch)]
            except ValueError:  # DenseNet-265: no torchvision weights
                names = []
            raise UserError(f"model.pretrained={name} is not a torchvision weights name of "
                            f"{self.arch}: use {', '.join(names + ['DEFAULT']) if names else 'a file'}"
                            " (or a file: model.pretrained=FILE)") from None

    def hub_state_dict(self, name: str) -> dict:
        """torchvision's full state dict of weights `name`, through torch.hub's cache (downloaded
        when online)."""
        from ..errors import UserError

        weights = self._weights(name)
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError, ValueError) as e:  # offline, a truncated download
            raise UserError(f"cannot get torchvision's {weights} ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0][:160]}); without network, download "
                            f"{weights.url} elsewhere and pass it: model.pretrained=FILE") from None

    def weights_name(self, name: str) -> str:
        return f"torchvision:{self._weights(name)}"

    def input_config(self, name: str) -> dict:
        """The evaluation transform the weights were made with (e.g. IMAGENET1K_V2: resize 232)."""
        t = self._weights(name).transforms()
        return {"mean": list(t.mean), "std": list(t.std), "train_crop": int(t.crop_size[0]),
                "eval_crop": int(t.crop_size[0]), "eval_resize": int(t.resize_size[0])}


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
def resnext101_32x8d() -> TorchvisionFeatures:
    return TorchvisionFeatures("resnext101_32x8d")


@register_model
def densenet121() -> TorchvisionFeatures:
    return TorchvisionFeatures("densenet121")


@register_model
def densenet265() -> TorchvisionFeatures:
    return TorchvisionFeatures("densenet265")
