"""The streams of an image-folder data set: files decoded and transformed in DataLoader workers.

Each item is decoded by isda_exp.data.folder.decode.decode_file (TorchCodec for JPEG, PNG, WebP and
GIF, Pillow for BMP and TIFF; always uint8 RGB), transformed on the uint8 tensor (isda_exp.data.folder.transforms) and collated into uint8 [n, 3, S, S] batches. A training image's
crop and flip draw from a generator seeded by item_seed(seed, epoch, index), so an epoch resumed at
batch k, another worker count and another number of ranks see the same pixels (the batches come
from stream.EpochBatchSampler, like the in-memory per-image pipeline).

An image that cannot be read or decoded is logged once per process in one short line (its path and
the decoder's reason) and replaced by the next readable image of the list (its own label), with
the augmentation of the original key: batch shapes and determinism are kept. Each batch carries
the indices of the files it could not use, so the main process counts the replacements and
collects the bad files (`BadImages`): the epoch's metrics row shows `bad_images` (this process's
batches since the last evaluation, summed over ranks by the engine; batches served before a resume
are not recounted) and, when there were any, `bad_files` (their paths under dataset.root).

`make_loader` swaps how batches are made (dataset.decode=device: isda_exp.data.folder.device_decode reads
the files' bytes in the workers and decodes and transforms batches on the training device).
"""
from __future__ import annotations

import logging
import os
from typing import Iterator

import numpy as np
import torch
from .decode import Undecodable, decode_file, short_reason
from .transforms import crop_flip_train, resize_centre_crop
from ...parallel.distributed import shard
from ...seeding import ITEM_CROP, item_seed
from ..streams import Batch, EpochBatchSampler

log = logging.getLogger("isda_exp")
_WARNED: set[str] = set()  # bad files logged by this process (each worker logs a file once)
_READ_ERRORS = (Undecodable, OSError, RuntimeError, ValueError)


class BadImages:
    """Replaced images counted, and the files that failed collected, in the main process (each
    batch carries, per replaced item, the indices of the files its workers could not use)."""

    def __init__(self, root: str | None = None):
        self.count, self.files, self.root = 0, set(), root  # root: paths are recorded below it

    def add(self, images: "FolderImages", failed: list[tuple[int, ...]]) -> None:
        self.count += len(failed)
        self.files.update(images.path(i) for item in failed for i in item)

    def take(self) -> int:
        """The count since the last take (an epoch's row), reset to 0."""
        count, self.count = self.count, 0
        return count

    def take_files(self) -> list[str]:
        """The bad files' paths (under root) since the last call, sorted, reset."""
        files, self.files = self.files, set()
        return sorted(os.path.relpath(f, self.root) if self.root else f for f in files)


class FolderImages(torch.utils.data.Dataset):
    """Items of a file list: key (epoch, index) for training (augmented), index for evaluation."""

    def __init__(self, root: str, files: np.ndarray, labels: torch.Tensor, transform: dict,
                 seed: int = 0):
        self.root, self.files, self.labels, self.seed = root, files, labels, int(seed)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.files[index]))

    def __getitem__(self, key) -> tuple[torch.Tensor, int, tuple[int, ...]]:
        """(uint8 [3, S, S], label, the indices of the files that failed before the one used)."""
        epoch, index = key if isinstance(key, tuple) else (None, key)
        img, used = self._read_from(index)
        return self.transformed(img, epoch, index), int(self.labels[used]), self.failed(index, used)

    def failed(self, index: int, used: int) -> tuple[int, ...]:
        """The files tried before `used` when item `index` was read (cyclically): () if none."""
        return tuple((index + k) % len(self.files) for k in range((used - index) % len(self.files)))

    def transformed(self, img: torch.Tensor, epoch: int | None, index: int) -> torch.Tensor:
        """Item (epoch, index)'s transform of a decoded image (on any device): the crop and flip
        keyed by (seed, epoch, index) for training, the centre crop for evaluation (epoch None)."""
        t = self.transform
        if epoch is None:
            return resize_centre_crop(img, t["eval_resize"], t["eval_crop"])
        gen = torch.Generator().manual_seed(item_seed(self.seed, epoch, index, ITEM_CROP))
        return crop_flip_train(img, t["train_crop"], t["scale"], t["ratio"], gen)

    def _read_from(self, index: int) -> tuple[torch.Tensor, int]:
        """The image at index, or the next readable one (cyclically) and its index."""
        n = len(self.files)
        for step in range(n):
            j = (index + step) % n
            try:
                return decode_file(self.path(j)), j
            except _READ_ERRORS as e:
                if self.path(j) not in _WARNED:
                    _WARNED.add(self.path(j))
                    reason = e.strerror or type(e).__name__ if isinstance(e, OSError) else short_reason(e)
                    log.warning(f"unreadable image {self.path(j)} ({reason}); replaced by the next "
                                "readable image")
        raise RuntimeError(f"no image under {self.root} can be read (all {n} failed)")


def collate(items) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, ...]]]:
    """(uint8 images, int64 labels, the failed file indices of each replaced item)."""
    images, labels, failed = zip(*items)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), [f for f in failed if f]


def _loader(dataset, batch_sampler, device: torch.device, num_workers: int, persistent: bool):
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=collate,
        persistent_workers=persistent and num_workers > 0, pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers > 0 else None)


class FolderTrainStream:
    """Augmented uint8 training batches (this rank's share of each global batch) on the device."""

    def __init__(self, images: FolderImages, batch_size: int, seed: int, device: torch.device,
                 num_workers: int, bad: BadImages, rank: int = 0, world: int = 1, make_loader=None):
        self.num_images, self.batch_size, self.device, self.bad = len(images), batch_size, device, bad
        self.images = images
        self.sampler = EpochBatchSampler(self.num_images, batch_size, seed, rank, world)
        self.loader = (make_loader or _loader)(images, self.sampler, device, num_workers, persistent=True)

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        self.sampler.set_epoch(epoch, start_batch)
        for x, y, failed in self.loader:
            self.bad.add(self.images, failed)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class _Range(torch.utils.data.Sampler):
    """Batches of consecutive indices over [lo, hi)."""

    def __init__(self, lo: int, hi: int, batch_size: int):
        self.lo, self.hi, self.batch_size = lo, hi, batch_size

    def __iter__(self):
        for i in range(self.lo, self.hi, self.batch_size):
            yield list(range(i, min(i + self.batch_size, self.hi)))

    def __len__(self):
        return -(-(self.hi - self.lo) // self.batch_size)


class FolderEvalStream:
    """This rank's contiguous part of the evaluation files, resized and centre-cropped."""

    top5 = True  # the engine reports top-5 error too (ImageNet's second figure)

    def __init__(self, images: FolderImages, split: str, device: torch.device, num_workers: int,
                 bad: BadImages, rank: int = 0, world: int = 1, make_loader=None):
        self.images, self.split, self.device, self.bad = images, split, device, bad
        self.make_loader = make_loader or _loader
        self.num_images, self.num_workers = len(images), num_workers
        self.lo, self.hi = shard(len(images), rank, world)
        self._loaders: dict[int, torch.utils.data.DataLoader] = {}

    def batches(self, batch_size: int) -> Iterator[Batch]:
        if batch_size not in self._loaders:  # workers kept for the next epoch's evaluation
            self._loaders[batch_size] = self.make_loader(
                self.images, _Range(self.lo, self.hi, batch_size), self.device, self.num_workers,
                persistent=True)
        for x, y, failed in self._loaders[batch_size]:
            self.bad.add(self.images, failed)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def take_bad_images(self) -> int:
        """Images replaced since the last call (training and evaluation): the epoch's count."""
        return self.bad.take()

    def take_bad_files(self) -> list[str]:
        """The files that failed since the last call (training and evaluation), sorted."""
        return self.bad.take_files()
