"""uint8 images -> the network's normalised float input, and the normalisation constants of the
data sets (CIFAR's, ImageNet's). Every data source's batches stay uint8 until the engine calls
`normalize` on the training device."""
from __future__ import annotations

import functools

import torch
from torch import Tensor

CIFAR_MEAN: tuple[float, float, float] = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD: tuple[float, float, float] = (63.0 / 255, 62.1 / 255, 66.7 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x: Tensor, norm: tuple | None = None) -> Tensor:
    """uint8 [..., 3, H, W] -> float32 (x/255 - mean)/std on the same device, in one fused pass.

    norm: (mean, std) per RGB channel on the 0-1 scale (an image folder's); None: CIFAR's."""
    if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.dim() < 3 or x.shape[-3] != 3:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"normalize expects uint8 images [..., 3, H, W], got {got}")
    mean, std = norm if norm is not None else (CIFAR_MEAN, CIFAR_STD)
    shift, scale = normalizer(tuple(mean), tuple(std), x.device)
    return torch.addcmul(shift, x.to(torch.float32), scale)


@functools.lru_cache(maxsize=None)
def normalizer(mean: tuple, std: tuple, device: torch.device) -> tuple[Tensor, Tensor]:
    """(-mean/std, 1/(255 std)) as [3, 1, 1] on device, built once (no host copy per batch):
    x_float = shift + x_uint8 * scale."""
    m = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    return (-m / s).to(device, torch.float32), (1.0 / (255.0 * s)).to(device, torch.float32)
