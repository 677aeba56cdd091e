"""The (image, mask) pairs of a segmentation split: files on disk (FilePairs) or arrays in memory
(MemoryPairs, the generated set). `read(i)` gives uint8 [3, H, W] and the mask as class indices
(uint8 [H, W], VOID = 255 where not trained on), every value checked against the data set's table.

Pairs are listed and their sizes compared (image headers only) before any training, so a missing
mask or a mask of another size than its image is one line at the start. A mask value the data set
does not define is one line when the mask is read. A file that cannot be read or decoded is logged
once and replaced by the next readable pair, as the image folders do: a run never dies on one bad
file, and batch shapes stay as they are.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from ...errors import UserError
from .files import image_size, read_image, read_mask
from .labels import UNKNOWN, VOID

log = logging.getLogger("isda_exp")
_WARNED: set[str] = set()


def check_values(mask: np.ndarray, lut: np.ndarray, path: str, num_classes: int) -> np.ndarray:
    """The mask's values through the lookup table; one line naming the values it does not define."""
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            bad = sorted({int(v) for v in np.unique(mask) if not 0 <= v <= 255})[:5]
            raise UserError(_bad_values(path, bad, num_classes))
        mask = mask.astype(np.uint8)
    mapped = lut[mask]
    if (mapped == UNKNOWN).any():
        bad = [int(v) for v in np.unique(mask[mapped == UNKNOWN])[:5]]
        raise UserError(_bad_values(path, bad, num_classes))
    return mapped.astype(np.uint8)


def _bad_values(path: str, bad: list[int], num_classes: int) -> str:
    return (f"mask {path} holds label values {bad} outside the {num_classes} classes and the "
            "ignore value: fix the mask, or set dataset.num_classes and dataset.ignore_index")


class FilePairs:
    """Image and mask files of one split, checked and read as described above."""

    def __init__(self, images: list[str], masks: list[str], lut: np.ndarray, num_classes: int):
        self.images = np.array([p.encode() for p in images])  # one array: forked workers share it
        self.masks = np.array([p.encode() for p in masks])
        self.lut, self.num_classes = lut, num_classes

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return self.images[index].decode()

    def check_sizes(self) -> None:
        """Every mask has its image's size (read from the headers: nothing is decoded)."""
        for image, mask in zip(self.images, self.masks):
            a, b = image_size(image.decode()), image_size(mask.decode())
            if a is not None and b is not None and a != b:
                raise UserError(f"mask {mask.decode()} is {b[0]}x{b[1]} but its image "
                                f"{image.decode()} is {a[0]}x{a[1]}: each mask must have its image's size")

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair at index, or the next readable one (its index replaced, logged once)."""
        n = len(self)
        for step in range(n):
            j = (index + step) % n
            try:
                return self._read(j)
            except (RuntimeError, OSError, ValueError) as e:
                path = self.name(j)
                if path not in _WARNED:
                    _WARNED.add(path)
                    log.warning(f"unreadable image or mask {path} ({type(e).__name__}: "
                                f"{str(e).strip()[:200]}); replaced by the next readable pair")
        raise UserError(f"no image and mask of this split can be read (all {n} failed)")

    def _read(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, path = read_image(self.name(j)), self.masks[j].decode()
        mask = read_mask(path)
        if mask.shape != tuple(img.shape[-2:]):
            raise UserError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{self.name(j)} is {img.shape[2]}x{img.shape[1]}: each mask must have "
                            "its image's size")
        return img, torch.from_numpy(check_values(mask, self.lut, path, self.num_classes))


class MemoryPairs:
    """Pairs held as arrays (uint8 [H, W, 3] images, uint8 [H, W] masks already in class indices)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray]):
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return f"generated image {index}"

    def check_sizes(self) -> None:
        return None

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.from_numpy(np.ascontiguousarray(self.images[index].transpose(2, 0, 1)))
        return img, torch.from_numpy(self.masks[index])


def matched_files(image_dir: str, mask_dir: str, mask_suffix: str = ".png",
                  image_suffix: str | None = None) -> tuple[list[str], list[str]]:
    """Images under image_dir (any depth, sorted) and the mask of each: the same relative path
    with its image suffix (or extension) replaced by mask_suffix. One line for missing masks."""
    images = []
    for dirpath, dirnames, filenames in os.walk(image_dir, followlinks=True):
        dirnames.sort()
        images += [os.path.join(dirpath, f) for f in sorted(filenames)
                   if (f.endswith(image_suffix) if image_suffix else
                       f.lower().endswith((".jpg", ".jpeg", ".png")))]
    if not images:
        raise UserError(f"{image_dir} holds no images (.jpg, .jpeg or .png)")
    masks = []
    for path in images:
        rel = os.path.relpath(path, image_dir)
        stem = rel[:-len(image_suffix)] if image_suffix else os.path.splitext(rel)[0]
        masks.append(os.path.join(mask_dir, stem + mask_suffix))
    missing = [m for m in masks if not os.path.isfile(m)]
    if missing:
        raise UserError(f"{len(missing)} of the {len(images)} images under {image_dir} have no mask "
                        f"(e.g. {missing[0]}): every image needs its mask of the same name")
    return images, masks
