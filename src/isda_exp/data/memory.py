"""The in-memory streams: a data set held as uint8 tensors (CIFAR, the synthetic set) served as
isda_exp.data.streams describes, its batched augmentation run on the training device."""
from __future__ import annotations

from typing import Iterator

import torch

from ..parallel.distributed import shard
from ..seeding import batch_augment_seed
from .streams import Batch, EpochBatchSampler, epoch_order


class MemoryTrainStream:
    """Augmented uint8 training batches on the device from images held in memory.

    A batched augmentation (baseline, Cutout): the images sit on the device and are cropped,
    flipped and cut batched there. A per-image one (AutoAugment: a factory of a keyed Dataset):
    persistent worker processes run it ahead of the model.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment, batch_size: int, seed: int,
                 device: torch.device, num_workers: int, rank: int = 0, world: int = 1):
        from .cifar_augment import BatchAugment

        self.num_images, self.batch_size, self.seed, self.device = len(y), batch_size, seed, device
        self.loader, self.rank, self.world = None, rank, world
        if not isinstance(augment, BatchAugment):  # a per-image pipeline for DataLoader workers
            self.sampler = EpochBatchSampler(self.num_images, batch_size, seed, rank, world)
            self.loader = torch.utils.data.DataLoader(
                augment(x, y, seed), batch_sampler=self.sampler, num_workers=num_workers,
                persistent_workers=num_workers > 0, pin_memory=device.type == "cuda",
                prefetch_factor=4 if num_workers > 0 else None)
        else:
            self.augment = augment
            self.x = x.to(device)
            self.y = y.to(device)

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Yields (uint8 images, labels) on the device, from batch `start_batch` on.

        Each batch's augmentation draws from a generator seeded by (seed, epoch, batch), so batch
        k is the same whether or not batches 0..k-1 were drawn in this process.
        """
        if self.loader is not None:
            self.sampler.set_epoch(epoch, start_batch)
            for x, y in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            return
        order = epoch_order(self.num_images, self.seed, epoch).to(self.device)
        gen = torch.Generator(device=self.device)
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            gen.manual_seed(batch_augment_seed(self.seed, epoch, b))
            x, y = self.augment(self.x[idx], gen), self.y[idx]  # the global batch, on every rank
            if self.world > 1:
                lo, hi = shard(len(idx), self.rank, self.world)
                x, y = x[lo:hi], y[lo:hi]
            yield x, y


class MemoryEvalStream:
    """This rank's contiguous part of an evaluation set held in memory, moved to the device once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, split: str, device: torch.device,
                 rank: int = 0, world: int = 1):
        self.num_images, self.split = len(y), split
        self.lo, self.hi = shard(len(y), rank, world)
        self.x, self.y = x.to(device), y.to(device)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for i in range(self.lo, self.hi, batch_size):
            yield self.x[i:min(i + batch_size, self.hi)], self.y[i:min(i + batch_size, self.hi)]
