"""Joint image/mask training transforms of the authors' Cityscapes loader, on uint8 tensors.

In their order: a random scale f from `scales` (image bilinear, mask nearest: every label value
stays one of the mask's own), padding at the bottom and right up to the crop (the mask with VOID;
the image's padding is set to 0 after normalisation by the engine, as the authors pad the
mean-subtracted image with 0), a random crop, a random horizontal flip. The draws come from the
caller's generator (seeded per image), so a pair's augmentation is a function of its key alone.

Returned with the crop: the box [top, bottom, left, right) of real image pixels in it, so the
engine can zero the padding after normalising (after a flip it is on the left).
"""
from __future__ import annotations

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .labels import VOID


def rescale(img: torch.Tensor, mask: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both resized by `scale` (cv2.resize's rounding of the size): bilinear image, nearest mask."""
    h, w = (int(round(s * scale)) for s in img.shape[-2:])
    if (h, w) == tuple(img.shape[-2:]):
        return img, mask
    img = TF.resize(img, [h, w], InterpolationMode.BILINEAR, antialias=False)
    mask = TF.resize(mask.unsqueeze(0), [h, w], InterpolationMode.NEAREST).squeeze(0)
    return img, mask


def train_transform(img: torch.Tensor, mask: torch.Tensor, crop: int, scales, flip: bool,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 [3, crop, crop], uint8 [crop, crop], int64 [4] box of real pixels) of one pair."""
    pick = int(torch.randint(len(scales), (1,), generator=generator))
    img, mask = rescale(img, mask, float(scales[pick]))
    h, w = img.shape[-2:]
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    if ph or pw:
        img = torch.nn.functional.pad(img, (0, pw, 0, ph), value=0)
        mask = torch.nn.functional.pad(mask, (0, pw, 0, ph), value=VOID)
    top = int(torch.randint(img.shape[-2] - crop + 1, (1,), generator=generator))
    left = int(torch.randint(img.shape[-1] - crop + 1, (1,), generator=generator))
    img = img[:, top:top + crop, left:left + crop]
    mask = mask[top:top + crop, left:left + crop]
    box = [0, min(h - top, crop), 0, min(w - left, crop)]
    if flip and float(torch.rand(1, generator=generator)) < 0.5:
        img, mask = img.flip(-1), mask.flip(-1)
        box[2], box[3] = crop - box[3], crop
    return img.contiguous(), mask.contiguous(), torch.tensor(box, dtype=torch.int64)


def zero_outside(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """x [n, 3, S, S] normalised, with every pixel outside its image's box set to 0 (in place)."""
    for i, (_, bottom, left, right) in enumerate(boxes.tolist()):  # top: always 0
        if bottom < x.shape[-2]:
            x[i, :, bottom:] = 0
        if left > 0:
            x[i, :, :, :left] = 0
        if right < x.shape[-1]:
            x[i, :, :, right:] = 0
    return x
