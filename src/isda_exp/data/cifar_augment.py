"""CIFAR augmentations: reflect-pad crop + flip, Cutout, AutoAugment.

Two pipelines, chosen by ``build_augment``:

* ``baseline`` / ``cutout``: :class:`BatchAugment`, batched tensor ops on the batch's device
  (GPU in training), all randomness drawn from a caller-supplied generator so that a seed
  reproduces an epoch exactly.
* ``autoaugment``: :class:`AutoAugmentDataset`, a per-image pipeline for DataLoader workers
  (torchvision's AutoAugment works one image at a time); each item is seeded from
  (seed, epoch, index), so results do not depend on worker count or scheduling.

All ops take and return uint8 images in pixel space; isda_exp.data.normalize turns them into float32
network input at the end (so the Cutout hole is black, value 0, as in the reference).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..errors import BadValue
from ..seeding import ITEM_CROP, ITEM_POLICY, item_seed

AUGMENTATIONS = ("baseline", "cutout", "autoaugment")
AUTOAUGMENT_FILL = 128

def _check_images(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x)
        raise ValueError(f"{name} must be a uint8 tensor [N, C, H, W] in pixel space, got {got}")


def _check_generator(generator: torch.Generator, device: torch.device) -> None:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the images are on {device}; "
            f"pass torch.Generator(device=images.device)"
        )


def _reflect(i: Tensor, size: int) -> Tensor:
    """Map indices in [-size+1, 2*size-2] onto [0, size) like np.pad(mode='reflect')."""
    i = i.abs()
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)


def crop_flip_params(n: int, padding: int, generator: torch.Generator, device=None):
    """Draw per-image crop offsets [n, 2] (row, col) in 0..2*padding and flip bits [n] (bool)."""
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return offsets, flips


def crop_flip_apply(x: Tensor, offsets: Tensor, flips: Tensor, padding: int = 4) -> Tensor:
    """Crop each reflect-padded image at its offset and mirror it where flips is set.

    Equivalent to np.pad(img, padding, 'reflect')[dy:dy+H, dx:dx+W] (then [:, ::-1]), done as
    one gather over flattened pixel indices without materialising the padded batch.
    """
    n, c, h, w = x.shape
    rows = _reflect(torch.arange(h, device=x.device) + offsets[:, :1] - padding, h)  # [n, h]
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols)  # flip the crop, then shift
    cols = _reflect(cols + offsets[:, 1:] - padding, w)  # [n, w]
    flat = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, flat).view(n, c, h, w)


def crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Standard CIFAR augmentation: reflect-pad, random crop back to H x W, random h-flip."""
    _check_images(x)
    _check_generator(generator, x.device)
    if not 0 <= padding < min(x.shape[-2:]):
        raise ValueError(f"padding must be in [0, {min(x.shape[-2:])}) for reflect padding, got {padding}")
    offsets, flips = crop_flip_params(x.shape[0], padding, generator, x.device)
    return crop_flip_apply(x, offsets, flips, padding)


def cutout_centres(n: int, h: int, w: int, generator: torch.Generator, device=None) -> Tensor:
    """Draw hole centres [n, 2] (row, col), uniform over every pixel of an h x w image."""
    rc = torch.randint(0, h * w, (n,), generator=generator, device=device)
    return torch.stack((rc // w, rc % w), dim=1)


def cutout_mask(centres: Tensor, length: int, h: int, w: int) -> Tensor:
    """Bool [n, h, w], True inside the length x length square at each centre, clipped to the image.

    The square spans [c - length//2, c - length//2 + length) on each axis, so it is exactly
    length wide in the interior (same as DeVries & Taylor's Cutout for even lengths).
    """
    start = centres - length // 2  # [n, 2]
    r = torch.arange(h, device=centres.device)
    c = torch.arange(w, device=centres.device)
    in_r = (r >= start[:, :1]) & (r < start[:, :1] + length)  # [n, h]
    in_c = (c >= start[:, 1:]) & (c < start[:, 1:] + length)  # [n, w]
    return in_r[:, :, None] & in_c[:, None, :]


def cutout(x: Tensor, length: int, generator: torch.Generator) -> Tensor:
    """Cutout: zero one length x length square per image (new tensor; x is left untouched)."""
    _check_images(x)
    _check_generator(generator, x.device)
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"cutout length must be a positive int, got {length!r}")
    n, _, h, w = x.shape
    centres = cutout_centres(n, h, w, generator, x.device)
    return x.masked_fill(cutout_mask(centres, length, h, w)[:, None], 0)


class BatchAugment:
    """Batched pipeline for aug=baseline|cutout: crop_flip, then Cutout when cutout_length > 0."""

    def __init__(self, cutout_length: int = 0):
        if not isinstance(cutout_length, int) or cutout_length < 0:
            raise ValueError(f"cutout_length must be an int >= 0 (0 = no Cutout), got {cutout_length!r}")
        self.cutout_length = cutout_length

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        x = crop_flip(x, generator)
        return cutout(x, self.cutout_length, generator) if self.cutout_length else x

    def __repr__(self) -> str:
        return f"BatchAugment(cutout_length={self.cutout_length})"


class AutoAugmentDataset(torch.utils.data.Dataset):
    """Per-image pipeline for aug=autoaugment, keyed by (epoch, index) for reproducibility.

    Item = crop_flip -> torchvision AutoAugment(CIFAR10, fill=128) -> Cutout -> uint8 [3, H, W].
    Crop/flip/Cutout draw from a local generator; AutoAugment draws from torch's global CPU
    generator, which is reseeded for the item inside fork_rng so the caller's RNG state is kept.
    """

    def __init__(self, images: Tensor, labels: Tensor, seed: int, cutout_length: int = 16):
        _check_images(images, "images")
        if images.device.type != "cpu":
            raise ValueError(f"images must be on the CPU (DataLoader workers), got {images.device}")
        if len(labels) != len(images):
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
        if not isinstance(cutout_length, int) or cutout_length < 0:
            raise ValueError(f"cutout_length must be an int >= 0 (0 = no Cutout), got {cutout_length!r}")
        self.images = images.contiguous()
        self.labels = torch.as_tensor(labels)
        self.seed = int(seed)
        self.cutout_length = cutout_length
        from torchvision.transforms import AutoAugment, AutoAugmentPolicy  # ~3 s: only when used

        self.autoaugment = AutoAugment(AutoAugmentPolicy.CIFAR10, fill=AUTOAUGMENT_FILL)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        try:
            epoch, index = (int(k) for k in key)
        except (TypeError, ValueError):
            raise TypeError(f"AutoAugmentDataset keys are (epoch, index) pairs, got {key!r}") from None
        if not 0 <= index < len(self.images):
            raise IndexError(f"index {index} out of range for {len(self.images)} images")
        gen = torch.Generator().manual_seed(item_seed(self.seed, epoch, index, ITEM_CROP))
        img = crop_flip(self.images[index : index + 1], gen)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(item_seed(self.seed, epoch, index, ITEM_POLICY))
            img = self.autoaugment(img)
        if self.cutout_length:
            img = cutout(img, self.cutout_length, gen)
        return img[0], int(self.labels[index])


def build_augment(name: str, cutout_length: int = 16):
    """The training augmentation of an `aug` config node (its `_target_`).

    baseline -> BatchAugment(0); cutout -> BatchAugment(cutout_length); autoaugment -> a factory
    ``(images, labels, seed) -> AutoAugmentDataset`` (functools.partial, ``.func`` is the class),
    run per image in DataLoader workers. aug=cutout without a hole is refused: it would train
    baseline augmentation in a run labelled cutout.
    """
    if name not in AUGMENTATIONS:
        raise BadValue(f"aug.name={name} is unknown: use aug=baseline, aug=cutout or aug=autoaugment")
    if not isinstance(cutout_length, int) or isinstance(cutout_length, bool) or cutout_length < 0:
        raise BadValue(f"aug.cutout_length={cutout_length} is not allowed: use an integer >= 0")
    if name == "cutout" and cutout_length < 1:
        raise BadValue(f"aug=cutout with aug.cutout_length={cutout_length} would train without a hole: "
                        "use aug.cutout_length >= 1 (the paper: 16), or aug=baseline")
    if name == "autoaugment":
        return functools.partial(AutoAugmentDataset, cutout_length=cutout_length)
    return BatchAugment(cutout_length if name == "cutout" else 0)
