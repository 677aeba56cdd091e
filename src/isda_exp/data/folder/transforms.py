"""ImageNet-style transforms on uint8 image tensors [3, H, W]: RandomResizedCrop + flip (training)
and resize-short-side + centre crop (evaluation); the network input is normalised later, with the
data set's constants (isda_exp.data.normalize).

The random draws are torchvision's, made from a caller's generator instead of torch's global RNG:
`random_resized_crop_box` is `torchvision.transforms.RandomResizedCrop.get_params` line for line
(the same draws in the same order), so with a generator in the same state it returns the same box,
and the flip draws `torch.rand(1) < 0.5` as `RandomHorizontalFlip` does. Resizing is torchvision's
tensor kernel (bilinear, antialiased: close to the PIL resize of the authors' pipeline).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF


def random_resized_crop_box(height: int, width: int, scale, ratio,
                            generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop: area fraction in `scale`, log-uniform aspect ratio in
    `ratio`, ten tries, then torchvision's central fallback."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1],
                                                   generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_flip_train(img: Tensor, size: int, scale, ratio, generator: torch.Generator) -> Tensor:
    """RandomResizedCrop(size, scale, ratio) then RandomHorizontalFlip(0.5): uint8 [3, size, size]."""
    top, left, h, w = random_resized_crop_box(img.shape[-2], img.shape[-1], scale, ratio, generator)
    out = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    if torch.rand(1, generator=generator) < 0.5:
        out = out.flip(-1)
    return out


def resize_centre_crop(img: Tensor, resize: int, crop: int) -> Tensor:
    """Evaluation: the short side to `resize` (torchvision's Resize(int)), then the centre crop."""
    return TF.center_crop(TF.resize(img, [resize], antialias=True), [crop, crop])
