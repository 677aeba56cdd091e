"""Data sets as in-memory uint8 tensors, and the per-epoch batch streams the trainer consumes.

Images stay uint8 NCHW until the batch is on the training device, so the whole CIFAR training set
(150 MB) can live on the GPU and augmentation runs batched there. All randomness of an epoch
(order, crops, flips, holes) derives from (seed, epoch, batch): a run resumed at any batch replays
exactly.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from .distributed import shard
from .errors import UserError

CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass
class Arrays:
    """A data set: uint8 images [N,3,32,32] and int64 labels, train and test."""

    name: str
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    eval_split: str = "test"  # "holdout" when x_test/y_test hold dataset.validation training images


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, stream...), never a plain sum."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


# ---------------------------------------------------------------- loading


def load_cifar(name: str, num_classes: int, root: str | None = None, download: bool = True,
               npz: str | None = None, train_subset: int | None = None,
               test_subset: int | None = None, subset_seed: int = 0,
               validation: int | None = None) -> Arrays:
    """CIFAR-10/100 from an .npz of the standard arrays, or through torchvision from `root`."""
    if name not in CIFAR_CLASSES:
        raise UserError(f"unknown CIFAR data set {name!r}: use dataset=cifar10 or dataset=cifar100")
    if npz:
        arrays = read_npz(npz, name, num_classes)
    else:
        arrays = _torchvision_cifar(name, num_classes, root or "data", download)
    return take_subsets(arrays, train_subset, test_subset, subset_seed, validation)


def _torchvision_cifar(name: str, num_classes: int, root: str, download: bool) -> Arrays:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = os.path.abspath(os.path.expanduser(root))
    pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    hint = (f"give the data with dataset.root=DIR (a directory holding {cls.base_folder}/) or "
            "dataset.npz=FILE (arrays x_train, y_train, x_test, y_test; see README)")
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=False)
    except RuntimeError as e:  # not found and download=False, or corrupt
        raise UserError(f"{pretty} not found in {root} ({e}); {hint}") from None
    except OSError as e:  # no network, DNS failure, refused connection, ...
        raise UserError(f"{pretty} is not in {root} and the download failed ({e}); {hint}") from None
    return _from_numpy(name, num_classes, train.data, np.asarray(train.targets),
                       test.data, np.asarray(test.targets), source=root)


def read_npz(path: str, name: str, num_classes: int) -> Arrays:
    """Arrays x_train uint8 [N,32,32,3], y_train, x_test, y_test, as unpack_cifar.py writes them."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        raise UserError(f"dataset.npz={path} is a directory; pass the .npz file itself "
                        f"(e.g. dataset.npz={os.path.join(path, name + '.npz')})")
    if not os.path.isfile(path):
        raise UserError(f"dataset.npz file not found: {path}; pass an existing .npz "
                        "(e.g. written by shared/data/unpack_cifar.py)")
    if not zipfile.is_zipfile(path):  # np.load would guess a pickle and say "pickled data"
        raise UserError(f"{path} is not an .npz archive (a zip of numpy arrays); pass the .npz of "
                        "x_train, y_train, x_test, y_test (e.g. written by shared/data/unpack_cifar.py)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise UserError(f"{path} lacks array(s) {', '.join(missing)}; it must hold "
                                f"{', '.join(NPZ_KEYS)}")
            parts = [f[k] for k in NPZ_KEYS]
    except (ValueError, OSError) as e:
        raise UserError(f"cannot read {path} as an .npz archive ({e}); pass a numpy .npz file") from None
    return _from_numpy(name, num_classes, *parts, source=path)


def _from_numpy(name, num_classes, x_train, y_train, x_test, y_test, source) -> Arrays:
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise UserError(f"x_{split} in {source} has shape {list(x.shape)}; expected "
                            "[N, 32, 32, 3] (N images, height, width, RGB)")
        if x.dtype != np.uint8:
            raise UserError(f"x_{split} in {source} has dtype {x.dtype}; expected uint8 pixels 0-255")
        if y.ndim != 1 or len(y) != len(x):
            raise UserError(f"y_{split} in {source} has shape {list(y.shape)}; expected [{len(x)}] "
                            f"(one label per image of x_{split})")
        if not np.issubdtype(y.dtype, np.integer) or len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise UserError(f"y_{split} in {source} must hold integer labels in 0..{num_classes - 1} "
                            f"for {name}; check the data set choice")

    def images(x):
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def labels(y):
        return torch.from_numpy(y.astype(np.int64))

    return Arrays(name, num_classes, images(x_train), labels(y_train), images(x_test), labels(y_test))


def take_subsets(a: Arrays, train_subset: int | None, test_subset: int | None, seed: int,
                 validation: int | None = None) -> Arrays:
    """Seeded random subsets (the same for every run seed, so seeds measure training variance).

    With `validation` the hold-out replaces the test set first (see hold_out); train_subset then
    draws from the remaining training images and test_subset from the hold-out.
    """
    if validation is not None:
        a = hold_out(a, validation, seed)

    def pick(x, y, n, split, stream):
        if n is None:
            return x, y
        if not 0 < int(n) <= len(x):
            raise UserError(f"dataset.{split}_subset={n} is out of range: use 1..{len(x)} or null")
        g = torch.Generator().manual_seed(mix_seed(seed, stream))
        idx = torch.randperm(len(x), generator=g)[: int(n)].sort().values
        return x[idx], y[idx]

    x_train, y_train = pick(a.x_train, a.y_train, train_subset, "train", 11)
    x_test, y_test = pick(a.x_test, a.y_test, test_subset, "test", 12)
    return Arrays(a.name, a.num_classes, x_train, y_train, x_test, y_test, a.eval_split)


def hold_out(a: Arrays, n: int, seed: int) -> Arrays:
    """The paper's lambda_0 protocol: n training images, n / C of each class, become the evaluation set.

    Seeded by the subset seed alone (the same hold-out for every run seed); the test set is dropped,
    so a hold-out run never sees a test image.
    """
    n, classes = int(n), a.num_classes
    if n < 1 or n % classes:
        raise UserError(f"dataset.validation={n} must be a positive multiple of the {classes} classes "
                        f"(a class-balanced hold-out), e.g. 5000")
    per_class = n // classes
    g = torch.Generator().manual_seed(mix_seed(seed, 13))
    picked = []
    for c in range(classes):
        members = (a.y_train == c).nonzero().flatten()
        if len(members) <= per_class:
            raise UserError(f"dataset.validation={n} needs {per_class} images of each class and leaves "
                            f"none of class {c} to train on ({len(members)} training images); use a "
                            "smaller dataset.validation")
        picked.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    held = torch.cat(picked).sort().values
    keep = torch.ones(len(a.y_train), dtype=torch.bool)
    keep[held] = False
    return Arrays(a.name, classes, a.x_train[keep], a.y_train[keep], a.x_train[held], a.y_train[held],
                  eval_split="holdout")


def load_synthetic(name: str = "synthetic", num_classes: int = 10, train_size: int = 2000,
                   test_size: int = 500, data_seed: int = 1234, npz: str | None = None,
                   train_subset: int | None = None, test_subset: int | None = None,
                   subset_seed: int = 0, validation: int | None = None) -> Arrays:
    """A learnable 32x32 RGB set: each class has its own colour and stripe pattern, plus noise.

    Hard enough that one epoch does not solve it, easy enough that a small net learns it in a few.
    """
    if npz:
        return take_subsets(read_npz(npz, name, num_classes), train_subset, test_subset, subset_seed,
                            validation)
    rng = np.random.default_rng(data_seed)
    colours = rng.uniform(60, 200, size=(num_classes, 3))
    freqs = rng.uniform(0.15, 0.6, size=num_classes)
    angles = rng.uniform(0, np.pi, size=num_classes)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)

    def make(n):
        y = rng.integers(0, num_classes, size=n)
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
        proj = (np.cos(angles[y])[:, None, None] * xx + np.sin(angles[y])[:, None, None] * yy)
        stripes = 45 * np.sin(freqs[y][:, None, None] * proj + phase)
        img = colours[y][:, None, None, :] + stripes[..., None] + rng.normal(0, 40, size=(n, 32, 32, 3))
        return np.clip(img, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = make(train_size)
    x_test, y_test = make(test_size)
    arrays = _from_numpy(name, num_classes, x_train, y_train, x_test, y_test, source="synthetic")
    return take_subsets(arrays, train_subset, test_subset, subset_seed, validation)


# ---------------------------------------------------------------- batches


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of one epoch, a function of (seed, epoch) alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch, 1)))


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


class TrainStream:
    """Augmented uint8 training batches on the device, for one epoch at a time.

    baseline/cutout: the images sit on the device and are cropped, flipped and cut batched there.
    autoaugment: persistent worker processes run the per-image policy ahead of the model.
    Under DDP (rank, world) every rank yields its contiguous part of each global batch, augmented
    as one process would augment it: an image's augmentation never depends on the ranks.
    """

    def __init__(self, arrays: Arrays, aug_name: str, cutout_length: int, batch_size: int,
                 seed: int, device: torch.device, num_workers: int, rank: int = 0, world: int = 1):
        from .augment import AutoAugmentDataset, BatchAugment

        self.n, self.batch_size, self.seed, self.device = len(arrays.y_train), batch_size, seed, device
        self.loader, self.rank, self.world = None, rank, world
        if aug_name == "autoaugment":
            dataset = AutoAugmentDataset(arrays.x_train, arrays.y_train, seed, cutout_length)
            self.sampler = EpochBatchSampler(self.n, batch_size, seed, rank, world)
            self.loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=self.sampler, num_workers=num_workers,
                persistent_workers=num_workers > 0, pin_memory=device.type == "cuda",
                prefetch_factor=4 if num_workers > 0 else None)
        else:
            self.augment = BatchAugment(cutout_length)
            self.x = arrays.x_train.to(device)
            self.y = arrays.y_train.to(device)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0):
        """Yields (uint8 images, labels) on the device, from batch `start_batch` on.

        Each batch's augmentation draws from a generator seeded by (seed, epoch, batch), so batch
        k is the same whether or not batches 0..k-1 were drawn in this process.
        """
        if self.loader is not None:
            self.sampler.set_epoch(epoch, start_batch)
            for x, y in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            return
        order = epoch_order(self.n, self.seed, epoch).to(self.device)
        gen = torch.Generator(device=self.device)
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            gen.manual_seed(mix_seed(self.seed, epoch, 2, b))
            x, y = self.augment(self.x[idx], gen), self.y[idx]  # the global batch, on every rank
            if self.world > 1:
                lo, hi = shard(len(idx), self.rank, self.world)
                x, y = x[lo:hi], y[lo:hi]
            yield x, y


def resolve_workers(num_workers) -> int:
    """'auto' = all cores but one (the trainer's), at least one."""
    if num_workers in (None, "auto"):
        return max(1, (os.cpu_count() or 2) - 1)
    return int(num_workers)

