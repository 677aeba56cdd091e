"""The batch streams of a segmentation run: iteration-based training batches, whole-image evaluation.

Training serves global batch g (0-based iteration) as the images at positions g*B .. g*B+B-1 of
one endless sequence of epochs, each a permutation of the training pairs by (seed, epoch), as the
authors' loader repeats its shuffled list. Every image's joint transform draws from a generator
seeded by item_seed(seed, epoch, index, ITEM_SEG), so batch g is a function of (seed, g) alone:
a run resumed at iteration g, another worker count and another number of ranks (each taking its
contiguous share of every global batch) see the same pixels.

Evaluation serves this rank's contiguous share of the evaluation pairs one whole image at a time
(uint8 [1, 3, H, W], mask [1, H, W]); their sizes may differ.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ...errors import UserError
from ...parallel.distributed import shard
from ...seeding import ITEM_SEG, item_seed
from ..streams import epoch_order
from .transforms import train_transform


def batch_keys(g: int, n: int, batch_size: int, seed: int, orders: dict) -> list[tuple[int, int]]:
    """The (epoch, index) keys of global batch g; `orders` caches each epoch's permutation."""
    keys = []
    for s in range(g * batch_size, (g + 1) * batch_size):
        epoch, k = divmod(s, n)
        if epoch not in orders:
            orders.clear()  # at most the epochs of one batch are needed at once
            orders[epoch] = epoch_order(n, seed, epoch).tolist()
        keys.append((epoch, orders[epoch][k]))
    return keys


class IterationSampler(torch.utils.data.Sampler):
    """This rank's keys of global batches start .. total-1 (set_start: where a run resumes)."""

    def __init__(self, n: int, batch_size: int, seed: int, total: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.total = n, batch_size, seed, total
        self.rank, self.world, self.start = rank, world, 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        orders: dict = {}
        for g in range(self.start, self.total):
            keys = batch_keys(g, self.n, self.batch_size, self.seed, orders)
            lo, hi = shard(len(keys), self.rank, self.world)
            yield keys[lo:hi]

    def __len__(self) -> int:
        return self.total - self.start


class TrainItems(torch.utils.data.Dataset):
    """Item (epoch, index): the pair's joint transform keyed by (seed, epoch, index)."""

    def __init__(self, pairs, crop: int, scales, flip: bool, seed: int):
        self.pairs, self.crop, self.scales, self.flip, self.seed = pairs, crop, tuple(scales), flip, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key):
        epoch, index = key
        img, mask = self.pairs.read(index)
        gen = torch.Generator().manual_seed(item_seed(self.seed, epoch, index, ITEM_SEG))
        return train_transform(img, mask, self.crop, self.scales, self.flip, gen)


def collate(items):
    images, masks, boxes = zip(*items)
    return torch.stack(images), torch.stack(masks), torch.stack(boxes)


def one_line(error: UserError) -> UserError:
    """A UserError raised in a DataLoader worker, as its own one line (the loader adds the
    worker's traceback to the message)."""
    text = str(error)
    if "Original Traceback" not in text:
        return error
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return UserError(last.split("Error: ", 1)[1] if "Error: " in last else last)


def _loader(dataset, sampler, num_workers: int, device: torch.device, collate_fn=None):
    """A DataLoader with a generator of its own: each iter() draws its workers' base seed from it,
    not from torch's global RNG, which holds the run's dropout draws (checkpointed; a resumed
    run's new iterator must not shift them). The items draw from their own keyed generators."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
        persistent_workers=num_workers > 0, pin_memory=device.type == "cuda",
        prefetch_factor=2 if num_workers > 0 else None, generator=torch.Generator().manual_seed(0))


class SegTrainStream:
    """(uint8 images [n, 3, S, S], uint8 masks [n, S, S], int64 boxes [n, 4]) per iteration."""

    def __init__(self, pairs, crop: int, scales, flip: bool, batch_size: int, seed: int,
                 total: int, device: torch.device, num_workers: int, rank: int = 0, world: int = 1):
        self.num_images, self.batch_size, self.total, self.device = len(pairs), batch_size, total, device
        self.sampler = IterationSampler(len(pairs), batch_size, seed, total, rank, world)
        self.items = TrainItems(pairs, crop, scales, flip, seed)
        self.loader = _loader(self.items, self.sampler, num_workers, device, collate)

    def iterations(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The batches of iterations start .. total-1 (0-based) on the device."""
        self.sampler.set_start(start)
        try:
            for x, y, box in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), box
        except UserError as e:
            raise one_line(e) from None


class _Range(torch.utils.data.Sampler):
    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def __iter__(self):
        return iter([[i] for i in range(self.lo, self.hi)])

    def __len__(self) -> int:
        return self.hi - self.lo


class _EvalItems(torch.utils.data.Dataset):
    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index):
        return self.pairs.read(index)


def _collate_one(items):
    (img, mask), = items
    return img.unsqueeze(0), mask.unsqueeze(0)


class SegEvalStream:
    """This rank's share of the evaluation pairs, one whole image a batch, on the device."""

    def __init__(self, pairs, split: str, device: torch.device, num_workers: int, rank: int = 0,
                 world: int = 1):
        self.num_images, self.split, self.device = len(pairs), split, device
        lo, hi = shard(len(pairs), rank, world)
        self.loader = _loader(_EvalItems(pairs), _Range(lo, hi), num_workers, device, _collate_one)

    def images(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for x, y in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except UserError as e:
            raise one_line(e) from None
