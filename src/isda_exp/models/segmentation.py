"""Segmentation networks of Table 7 (DeepLab-v3, PSPNet; output stride 8, auxiliary head on layer3)
built from torchvision's parts, cut so that the runner gets each head's penultimate feature map and
its final 1x1 classifier (per-pixel ISDA needs both; torchvision's own forward upsamples at once).

`SegmentationNet.forward(x)` returns the heads' penultimate maps [main, aux] at stride 8;
`classifiers[h]` is head h's final nn.Conv2d(A_h, C, 1); `main_logits(x)` is the main head's
logits at stride 8 (evaluation; the auxiliary head is skipped).

Backbones: torchvision's ResNet-50/101 with layer3 and layer4 dilated (replace_stride_with_dilation
[False, True, True], as torchvision's deeplabv3_resnet*), or `tiny` (a few dilated conv layers, for
CPU smoke runs and tests). Heads: head="torchvision" is torchvision's DeepLabHead (ASPP with
256-channel branches and projection, Dropout 0.5, a 3x3 conv to 256) and FCNHead (layer3 -> 3x3
conv to 256, Dropout 0.1); head="authors" the widths of the authors' network (ASPP branches 256 ->
1x1 to 512 -> Dropout2d 0.1; auxiliary 3x3 conv 1024 -> 512 -> Dropout2d 0.1). PSPNet (the
authors' head: pyramid pooling over bins 1/2/3/6 at 512 channels each, a 3x3 bottleneck to 512,
Dropout2d 0.1) has no torchvision counterpart. Where ours differs from the authors' network
(their deep stem, InPlace-ABN with leaky ReLU): docs/segmentation.md.

Backbone weights (`pretrained`): null (torchvision's initialisation), a torchvision weights name
of the ResNet (IMAGENET1K_V1, IMAGENET1K_V2: downloaded once into torch's cache), or a local file
(.pth/.pt read as data with weights_only, or .safetensors) holding a ResNet state dict.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

BACKBONES = ("resnet50", "resnet101", "tiny")
HEADS = ("torchvision", "authors")


class SegmentationNet(nn.Module):
    """Backbone -> heads (penultimate maps) -> final 1x1 classifiers, main head first."""

    def __init__(self, backbone: nn.Module, heads: list[nn.Module], dims: list[int], num_classes: int):
        super().__init__()
        self.backbone, self.heads = backbone, nn.ModuleList(heads)
        self.classifiers = nn.ModuleList(nn.Conv2d(d, num_classes, 1) for d in dims)
        self.feature_dims, self.num_classes = tuple(dims), num_classes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)
        return [self.heads[0](feats["out"]), self.heads[1](feats["aux"])]

    def main_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifiers[0](self.heads[0](self.backbone(x)["out"]))


# ------------------------------------------------------------------ backbones


class TinyBackbone(nn.Module):
    """Stride 8 in three strided 3x3 convs, then `aux` (dilation 2) and `out` (dilation 4) maps."""

    def __init__(self, widths=(16, 32, 48, 64)):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = nn.Sequential(_conv(3, w0, stride=2), _conv(w0, w1, stride=2), _conv(w1, w1, stride=2))
        self.layer3 = nn.Sequential(_conv(w1, w2, dilation=2), _conv(w2, w2, dilation=2))
        self.layer4 = _conv(w2, w3, dilation=4)
        self.channels = (w2, w3)

    def forward(self, x):
        aux = self.layer3(self.stem(x))
        return {"aux": aux, "out": self.layer4(aux)}


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=bias),
                         nn.BatchNorm2d(cout), nn.ReLU())


def build_backbone(name: str, pretrained: str | None = None, widths=None) -> nn.Module:
    """A backbone whose forward returns {"aux": layer3 map, "out": layer4 map}, both at stride 8."""
    if name not in BACKBONES:
        raise UserError(f"model.net.backbone={name} is unknown: use one of {', '.join(BACKBONES)}")
    if name == "tiny":
        body = TinyBackbone(tuple(widths) if widths else (16, 32, 48, 64))
    else:
        import torchvision
        from torchvision.models._utils import IntermediateLayerGetter

        resnet = getattr(torchvision.models, name)(weights=None,
                                                   replace_stride_with_dilation=[False, True, True])
        body = IntermediateLayerGetter(resnet, return_layers={"layer3": "aux", "layer4": "out"})
        body.channels = (resnet.layer3[-1].conv3.out_channels, resnet.layer4[-1].conv3.out_channels)
    if pretrained:
        load_backbone_weights(body, name, str(pretrained))
    return body


def load_backbone_weights(body: nn.Module, name: str, pretrained: str) -> None:
    """Backbone weights from a local file or a torchvision weights name; one line when they do not fit."""
    path = os.path.expanduser(pretrained)
    if os.path.isfile(path) or os.sep in pretrained or pretrained.endswith((".pth", ".pt", ".safetensors")):
        state = _read_state(path)
    else:
        state = _torchvision_state(name, pretrained)
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the ImageNet classifier
    missing, unexpected = body.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"model.pretrained={pretrained} does not fit the {name} backbone (missing "
                        f"{len(missing)} keys, e.g. {missing[:2]}; unexpected {len(unexpected)}, e.g. "
                        f"{unexpected[:2]}): give the state dict of a torchvision {name}")


def _read_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"model.pretrained={path} does not exist: give a .pth/.safetensors file of "
                        "backbone weights, or a torchvision weights name such as IMAGENET1K_V1")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)  # data, never code
    except Exception as e:
        raise UserError(f"model.pretrained={path} cannot be read as weights ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"model.pretrained={path} holds no state dict of tensors")
    return state


def _torchvision_state(name: str, weights: str) -> dict:
    import torchvision

    if name == "tiny":
        raise UserError(f"model.pretrained={weights}: the tiny backbone has no torchvision weights; "
                        "give a local file or null")
    enum = getattr(torchvision.models, f"ResNet{name[len('resnet'):]}_Weights")
    if weights not in enum.__members__:
        raise UserError(f"model.pretrained={weights} is not a torchvision weights name for {name}: "
                        f"use one of {', '.join(enum.__members__)}, a local file, or null")
    try:
        return enum[weights].get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # offline, a proxy, a damaged cache
        raise UserError(f"cannot download the {name} weights {weights} ({type(e).__name__}); "
                        "offline, download them elsewhere and give the file: model.pretrained=FILE") from None


# ------------------------------------------------------------------ heads


def _split(head: nn.Sequential) -> tuple[nn.Sequential, int]:
    """A torchvision head without its final 1x1 classifier, and the width it ends with."""
    layers = list(head)
    return nn.Sequential(*layers[:-1]), layers[-1].in_channels


def _auxiliary(channels: int, head: str, width: int | None) -> tuple[nn.Module, int]:
    """The head on layer3: torchvision's FCNHead (channels // 4, Dropout 0.1) or the authors' (512)."""
    if head == "torchvision":
        from torchvision.models.segmentation.fcn import FCNHead

        if width is None:
            return _split(FCNHead(channels, 1))
        return _split(nn.Sequential(_conv(channels, width), nn.Dropout(0.1), nn.Conv2d(width, 1, 1)))
    width = width or 512
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Dropout2d(0.1)), width


def _aspp_head(channels: int, rates, head: str, branch: int | None, width: int | None):
    from torchvision.models.segmentation.deeplabv3 import ASPP

    branch = branch or 256
    aspp = ASPP(channels, tuple(rates), branch)
    if head == "torchvision":  # DeepLabHead: ASPP (projection to `branch`), 3x3 conv, BN, ReLU
        width = width or branch
        return nn.Sequential(aspp, nn.Conv2d(branch, width, 3, padding=1, bias=False),
                             nn.BatchNorm2d(width), nn.ReLU()), width
    width = width or 512  # the authors': the concatenated branches -> 1x1 to 512 -> Dropout2d(0.1)
    aspp.project = nn.Sequential(nn.Conv2d(5 * branch, width, 1, bias=False), nn.BatchNorm2d(width),
                                 nn.ReLU(), nn.Dropout2d(0.1))
    return aspp, width


class PyramidPooling(nn.Module):
    """PSPNet's head as the authors': pooled bins -> 1x1 convs, upsampled (align_corners=True),
    concatenated with the input -> 3x3 bottleneck -> BN, ReLU, Dropout2d(0.1)."""

    def __init__(self, channels: int, bins=(1, 2, 3, 6), stage: int = 512, width: int = 512):
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(channels, stage, 1, bias=False),
                                                  nn.BatchNorm2d(stage), nn.ReLU()) for b in bins)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(channels + len(bins) * stage, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout2d(0.1))

    def forward(self, x):
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=True) for s in self.stages]
        return self.bottleneck(torch.cat([*pooled, x], 1))


# ------------------------------------------------------------------ the models


def deeplabv3(num_classes: int, backbone: str = "resnet101", head: str = "torchvision",
              atrous_rates=(12, 24, 36), pretrained: str | None = None, widths=None,
              branch_channels: int | None = None, head_channels: int | None = None,
              aux_channels: int | None = None) -> SegmentationNet:
    """DeepLab-v3 (ASPP) with the auxiliary head on layer3; see the module docstring."""
    _check_head(head)
    body = build_backbone(backbone, pretrained, widths)
    main, dim = _aspp_head(body.channels[1], atrous_rates, head, branch_channels, head_channels)
    aux, aux_dim = _auxiliary(body.channels[0], head, aux_channels)
    return SegmentationNet(body, [main, aux], [dim, aux_dim], num_classes)


def pspnet(num_classes: int, backbone: str = "resnet101", bins=(1, 2, 3, 6),
           pretrained: str | None = None, widths=None, stage_channels: int = 512,
           head_channels: int = 512, aux_channels: int | None = None) -> SegmentationNet:
    """PSPNet (the authors' pyramid pooling head) with their auxiliary head on layer3."""
    body = build_backbone(backbone, pretrained, widths)
    main = PyramidPooling(body.channels[1], tuple(bins), stage_channels, head_channels)
    aux, aux_dim = _auxiliary(body.channels[0], "authors", aux_channels)
    return SegmentationNet(body, [main, aux], [head_channels, aux_dim], num_classes)


def _check_head(head: str) -> None:
    if head not in HEADS:
        raise UserError(f"model.net.head={head} is unknown: use torchvision (torchvision's "
                        "DeepLabHead/FCNHead widths) or authors (the authors' 512-channel heads)")


def forward_flops(net: SegmentationNet, size: int, train: bool = True) -> int:
    """FLOPs of one size x size image: both heads and classifiers (train) or the main logits
    (evaluation), counted on the meta device (shapes only), as isda_exp.models counts the zoo."""
    from torch.utils.flop_counter import FlopCounterMode

    net = net.to("meta").train(train)
    x = torch.zeros(2, 3, size, size, device="meta")  # 2: BatchNorm after ASPP's pooling trains on >1
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if train:
            [c(f) for c, f in zip(net.classifiers, net(x))]
        else:
            net.main_logits(x)
    return int(counter.get_total_flops()) // 2
