"""The images explain reads, whichever data source the run trained on.

Two things are needed from a data set: every image of a split once, in order, in uint8 batches (for
the features, so memory stays bounded by one batch), and a few single images by index (for the
figures' tiles). In-memory CIFAR arrays give both by slicing; an image folder decodes its files in
DataLoader workers with its evaluation transform (resize + centre crop, never augmented) and reads
a tile's file when a figure names it, so a folder of 1.28M images is never held as images.
"""
from __future__ import annotations

import os
from typing import Iterator

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ..data import Arrays
from ..data.folder import ImageFolderSource, list_classes
from ..data.folder.loader import BadImages, FolderEvalStream, FolderImages

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")
TILE = 64  # pixels of a folder image's tile in the figures (CIFAR's stay 32)


class Images:
    """One split: its labels, its images in batches, and a tile by index (`split[i]`)."""

    def __init__(self, labels: Tensor, batches, tile):
        self.labels, self._batches, self._tile = labels, batches, tile

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, size: int) -> Iterator[Tensor]:
        """uint8 [n, 3, H, W] batches of every image in order."""
        return self._batches(size)

    def __getitem__(self, index: int) -> Tensor:
        return self._tile(int(index))


class ExplainData:
    """Labels, class count and the two splits; x_*/y_* named as on the in-memory arrays."""

    def __init__(self, train: Images, test: Images, num_classes: int, eval_split: str,
                 norm: tuple | None):
        self.x_train, self.x_test = train, test
        self.y_train, self.y_test = train.labels, test.labels
        self.num_classes, self.eval_split = num_classes, eval_split
        self.norm = norm  # (mean, std) of the source; None: CIFAR's


def explain_data(data, workers: int) -> ExplainData:
    """The run's data source (isda_exp.training.build.build_data's result) as explain reads it."""
    if isinstance(data, Arrays):
        def split(x: Tensor, y: Tensor) -> Images:
            return Images(y, lambda size: (x[i:i + size] for i in range(0, len(x), size)),
                          lambda i: x[i])
        return ExplainData(split(data.x_train, data.y_train), split(data.x_test, data.y_test),
                           data.num_classes, data.eval_split, None)
    if isinstance(data, ImageFolderSource):
        train = _folder_split(data, data.train_root, data.train_files, data.train_labels, workers)
        test = _folder_split(data, data.eval_root, data.eval_files, data.eval_labels, workers)
        return ExplainData(train, test, data.num_classes, data.eval_split, (data.mean, data.std))
    raise TypeError(f"explain cannot read a {type(data).__name__} data source")


def _folder_split(data: ImageFolderSource, root: str, files, labels: Tensor, workers: int) -> Images:
    images = FolderImages(root, files, labels, data.transform)

    def batches(size: int) -> Iterator[Tensor]:
        stream = FolderEvalStream(images, "explain", torch.device("cpu"), workers, BadImages())
        return (x for x, _ in stream.batches(size))

    def tile(index: int) -> Tensor:
        return TF.resize(images[index][0], [TILE, TILE], antialias=True)
    return Images(labels, batches, tile)


def class_names(dataset_cfg) -> list[str]:
    """The classes' names: CIFAR-10's, an image folder's class folders, else 'class N'."""
    name, count = str(dataset_cfg.name), dataset_cfg.get("num_classes")
    root = dataset_cfg.get("root")
    if str(dataset_cfg.get("_target_", "")).endswith("load_folder") and root is not None:
        return list_classes(os.path.abspath(os.path.expanduser(str(root))))[0]
    if name == "cifar10" and count == 10:
        return list(CIFAR10_NAMES)
    return [f"class {c}" for c in range(int(count))]
