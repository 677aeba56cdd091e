"""Model zoo: CIFAR feature extractors, torchvision's ImageNet models (torchvision_nets) and any timm
architecture (timm_nets); each forward returns pooled features [N, feature_dim]. Pretrained
weights for all of them: pretrained.py.

The classifier nn.Linear(feature_dim, num_classes) is built by the trainer (ISDA needs its weight),
so `count_params` / `flops_per_image` add it to match the paper's figures. The segmentation
networks of Table 7 (DeepLab-v3, PSPNet: segmentation.py) return feature maps and hold their 1x1
classifiers; they are built with their class count and are not in the zoo's registry.
"""
from . import densenet, resnet, resnext, shake_shake, timm_nets, torchvision_nets, wide_resnet  # noqa: F401  (register models)
from ._registry import create_model, list_models, register_model
from ._stats import count_params, flops_per_image, recipe_epochs, training_pflops
from .pretrained import extract_weights, load_pretrained, read_weights, weights_id
from .segmentation import SegmentationNet, deeplabv3, pspnet

__all__ = ["create_model", "list_models", "register_model", "count_params", "flops_per_image",
           "recipe_epochs", "training_pflops", "load_pretrained", "read_weights", "weights_id",
           "extract_weights", "SegmentationNet", "deeplabv3", "pspnet"]
