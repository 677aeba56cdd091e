"""The batch streams a run trains and evaluates on: the interface the loop knows (its in-memory
implementation is isda_exp.data.memory, the image folders' isda_exp.data.folder.loader).

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
from ..seeding import order_seed

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


def resolve_workers(num_workers) -> int:
    """'auto' = all cores but one (the trainer's), at least one."""
    if num_workers in (None, "auto"):
        return max(1, (os.cpu_count() or 2) - 1)
    return int(num_workers)
