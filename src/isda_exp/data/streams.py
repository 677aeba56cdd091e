"""The batch streams a run trains and evaluates on: the interface the loop knows, and the
in-memory implementation (a data set held as uint8 tensors, e.g. CIFAR).

A training stream serves one epoch at a time as (uint8 images [n,3,H,W], int64 labels) on the
training device: this rank's contiguous share of every global batch, resumable at any batch.
Every image's augmentation is a function of (seed, epoch, image) alone, so a resumed epoch, a
different worker count and a different number of ranks see the same images. An evaluation stream
serves this rank's share of the evaluation set, unaugmented. A data source (the object a
`dataset` config builds) makes both; another implementation (e.g. files decoded on the fly)
plugs in by providing the same methods.
"""
from __future__ import annotations

import os
from typing import Iterator, Protocol

import torch

from ..parallel.distributed import shard
from ..seeding import batch_augment_seed, order_seed

Batch = tuple[torch.Tensor, torch.Tensor]


class TrainStream(Protocol):
    num_images: int  # training images per epoch, over all ranks

    def __len__(self) -> int:  # batches per epoch
        ...

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        ...


class EvalStream(Protocol):
    num_images: int  # evaluation images, over all ranks
    split: str  # "test", or "holdout" (dataset.validation)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        ...


class DataSource(Protocol):
    """What a `dataset` config builds: the data's facts and a maker of its two streams."""

    name: str
    num_classes: int
    num_train: int
    eval_split: str

    def train_stream(self, augment, batch_size: int, seed: int, device: torch.device,
                     num_workers: int, rank: int = 0, world: int = 1) -> TrainStream:
        ...

    def eval_stream(self, device: torch.device, rank: int = 0, world: int = 1) -> EvalStream:
        ...


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of one epoch, a function of (seed, epoch) alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(order_seed(seed, epoch)))


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields batches of (epoch, index) keys, so worker-side randomness is keyed per image.

    Under DDP each rank yields its contiguous part of every global batch (rank, world).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.epoch, self.start_batch = n, batch_size, seed, 0, 0
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The epoch to serve, from batch `start_batch` on (a run resumed mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch).tolist()
        for i in range(self.start_batch * self.batch_size, self.n, self.batch_size):
            batch = order[i:i + self.batch_size]
            lo, hi = shard(len(batch), self.rank, self.world)
            yield [(self.epoch, j) for j in batch[lo:hi]]

    def __len__(self):
        return -(-self.n // self.batch_size)


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


def resolve_workers(num_workers) -> int:
    """'auto' = all cores but one (the trainer's), at least one."""
    if num_workers in (None, "auto"):
        return max(1, (os.cpu_count() or 2) - 1)
    return int(num_workers)
