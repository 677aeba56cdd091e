"""Size and cost figures of the zoo: parameters, forward FLOPs, full-recipe training cost."""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..paths import config_file
from ._registry import create_model, list_models
from .cost import CIFAR_TRAIN, run_pflops


def _with_classifier(name: str, num_classes: int) -> nn.Module:
    """Feature extractor + the trainer's separate Linear head, as the paper counts them.
    `timm:ARCH` is timm's architecture ARCH (model=timm model.arch=ARCH)."""
    family, _, arch = name.partition(":")
    net = create_model(family, arch=arch) if arch else create_model(name)
    return nn.Sequential(net, nn.Linear(net.feature_dim, num_classes))


class _Sizes(NamedTuple):
    params: int
    flops: int
    feature_dim: int


@functools.lru_cache(maxsize=None)
def _sizes(name: str, num_classes: int) -> _Sizes:
    """Parameters, forward FLOPs and feature_dim from one build of the model: building is what
    costs (weight init of up to 60M parameters); the FLOP pass then runs on the meta device, where
    no arithmetic is done (the count depends on shapes only)."""
    model = _with_classifier(name, num_classes).eval()
    params = sum(p.numel() for p in model.parameters())
    size = getattr(model[0], "input_size", 32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.to("meta")(torch.zeros(1, 3, size, size, device="meta"))
    return _Sizes(params, int(counter.get_total_flops()), model[0].feature_dim)


def count_params(name: str, num_classes: int = 10) -> int:
    """Trainable parameters including the classifier (feature_dim * C + C), as in the paper's Table 1."""
    return _sizes(name, num_classes).params


def flops_per_image(name: str, num_classes: int = 10) -> int:
    """Forward FLOPs of one image in eval mode, classifier included: 3x32x32, or the model's
    `input_size` (the torchvision ImageNet models: 224).

    FlopCounterMode counts convolutions and matmuls (a multiply-add is 2 FLOPs); BN, ReLU and
    pooling are left out, as in the usual FLOP figures of these papers.
    """
    return _sizes(name, num_classes).flops


def recipe_epochs(name: str) -> int:
    """Epochs of the model's training recipe, read from its config."""
    from omegaconf import OmegaConf

    return int(OmegaConf.load(config_file("model", name.partition(":")[0])).recipe.epochs)


def training_pflops(name: str, num_classes: int = 10) -> float:
    """One full-recipe run's training (no test passes) in PFLOPs: the cost model over 50,000 images."""
    return run_pflops(flops_per_image(name, num_classes), recipe_epochs(name), CIFAR_TRAIN)


def zoo_table(num_classes: int = 10, names: list[str] | None = None) -> str:
    """Plain-text table of the models' sizes and costs (every registered model, or `names`, e.g.
    timm:convnext_nano)."""
    rows = [f"{'model':<28}{'params':>12}{'feat dim':>10}{'GFLOPs/img':>12}{'epochs':>8}{'train PFLOPs':>14}"]
    for name in names or list_models():
        rows.append(f"{name:<28}{count_params(name, num_classes) / 1e6:>11.3f}M"
                    f"{_sizes(name, num_classes).feature_dim:>10}"
                    f"{flops_per_image(name, num_classes) / 1e9:>12.3f}{recipe_epochs(name):>8}"
                    f"{training_pflops(name, num_classes):>14.1f}")
    return "\n".join(rows)
