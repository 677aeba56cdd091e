"""The config side of pretrained weights: what `model.pretrained` names, for the science config,
and the input the weights expect, for the image-folder transforms left at `auto`.

Both are resolved in the config itself before the run's records are written (like
trainer.precision=auto), so a run's science config holds the file's SHA-256 or the weights' full
name (`model.pretrained_id`; the path is where the file is, not what it is) and the concrete
mean, std and sizes it trained with. The model (`make_net()`, build.py's builder) is built on the
meta device for this: only its attributes are read, no weights are allocated or drawn.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig, open_dict

from ..data.normalize import IMAGENET_MEAN, IMAGENET_STD
from ..models.pretrained import input_config, weights_id

INPUT_KEYS = ("mean", "std", "train_crop", "eval_resize", "eval_crop")
# an image folder's input without weights that say otherwise: ImageNet's (the authors')
IMAGENET_INPUT = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "train_crop": 224,
                  "eval_resize": 256, "eval_crop": 224}


def _meta_net(make_net):
    with torch.device("meta"):
        return make_net()


def resolve_pretrained(cfg: DictConfig, make_net) -> None:
    """model.pretrained_id: what model.pretrained loads ('sha256:...' or the library's name)."""
    spec = cfg.model.get("pretrained")
    if not spec or cfg.model.get("pretrained_id"):
        return
    with open_dict(cfg):
        cfg.model.pretrained_id = weights_id(_meta_net(make_net), str(spec))


def resolve_inputs(cfg: DictConfig, make_net) -> None:
    """dataset.mean/std/train_crop/eval_resize/eval_crop left at `auto`: the weights' own (timm's
    data config, torchvision's weights transforms), else ImageNet's."""
    dataset = cfg.get("dataset") or {}
    auto = [k for k in INPUT_KEYS if dataset.get(k) == "auto"]
    if not auto:
        return
    spec = cfg.model.get("pretrained")
    own = input_config(_meta_net(make_net), str(spec) if spec else None) or {}
    for key in auto:
        cfg.dataset[key] = own.get(key, IMAGENET_INPUT[key])
