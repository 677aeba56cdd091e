"""CIFAR held in memory as uint8 tensors, with its seeded subsets and hold-out.

Images stay uint8 NCHW until the batch is on the training device, so the whole CIFAR training set
(150 MB) can live on the GPU and augmentation runs batched there; `Arrays` serves them through the
in-memory streams of isda_exp.data.memory.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from .. import seeding
from .memory import MemoryEvalStream, MemoryTrainStream
from .subsets import class_balanced_holdout, seeded_subset

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

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    def train_stream(self, augment, batch_size: int, seed: int, device: torch.device,
                     num_workers: int, rank: int = 0, world: int = 1) -> MemoryTrainStream:
        return MemoryTrainStream(self.x_train, self.y_train, augment, batch_size, seed, device,
                                 num_workers, rank, world)

    def eval_stream(self, device: torch.device, rank: int = 0, world: int = 1) -> MemoryEvalStream:
        return MemoryEvalStream(self.x_test, self.y_test, self.eval_split, device, rank, world)


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
        idx = seeded_subset(len(x), n, seed, stream, split)
        return (x, y) if idx is None else (x[idx], y[idx])

    x_train, y_train = pick(a.x_train, a.y_train, train_subset, "train", seeding.TRAIN_SUBSET)
    x_test, y_test = pick(a.x_test, a.y_test, test_subset, "test", seeding.TEST_SUBSET)
    return Arrays(a.name, a.num_classes, x_train, y_train, x_test, y_test, a.eval_split)


def hold_out(a: Arrays, n: int, seed: int) -> Arrays:
    """The paper's lambda_0 protocol: n training images, n / C of each class, become the evaluation set.

    Seeded by the subset seed alone (the same hold-out for every run seed); the test set is dropped,
    so a hold-out run never sees a test image.
    """
    held = class_balanced_holdout(a.y_train, a.num_classes, n, seed)
    keep = torch.ones(len(a.y_train), dtype=torch.bool)
    keep[held] = False
    return Arrays(a.name, a.num_classes, a.x_train[keep], a.y_train[keep], a.x_train[held], a.y_train[held],
                  eval_split="holdout")


