"""Image-folder data sets (ImageNet, or any `train/<class>/*`, `val/<class>/*` folder a user brings).

The classes are the sorted sub-folders of train/ (val/ must hold the same ones); their images are
the image files below each (any depth, sorted, symbolic links followed): .jpg/.jpeg/.png/.webp/
.gif decoded by TorchCodec, .bmp/.tif/.tiff/.ppm/.pgm by Pillow (isda_exp.data.folder.decode);
files of other extensions are counted and named in one log line per split. Only the file list lives in memory (as
one numpy bytes array, so forked DataLoader workers share it); images are decoded on the fly by
isda_exp.data.folder.loader. A seeded class-balanced hold-out (dataset.validation) and seeded subsets
work as for the in-memory CIFAR arrays (isda_exp.data).
"""
from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np
import torch

from ... import seeding
from ..normalize import IMAGENET_MEAN, IMAGENET_STD
from ...errors import UserError
from .decode import EXTENSIONS
from .device_decode import DeviceDecodeLoader, check_decode
from ..subsets import class_balanced_holdout, seeded_subset
from .loader import BadImages, FolderEvalStream, FolderImages, FolderTrainStream

log = logging.getLogger("isda_exp")


def list_classes(root: str) -> tuple[list[str], str]:
    """The sorted class folders of root/train, checked against root/val."""
    if not os.path.isdir(root):
        raise UserError(f"dataset.root={root} does not exist: give a folder holding train/<class>/* "
                        "and val/<class>/* images")
    train, val = os.path.join(root, "train"), os.path.join(root, "val")
    for split, path in (("train", train), ("val", val)):
        if not os.path.isdir(path):
            raise UserError(f"dataset.root={root} has no {split}/ folder: the layout is "
                            f"{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg")
    classes = sorted(e.name for e in os.scandir(train) if e.is_dir())
    if not classes:
        raise UserError(f"{train} holds no class folders: put each class's images in "
                        f"{train}/<class>/")
    val_classes = sorted(e.name for e in os.scandir(val) if e.is_dir())
    if val_classes != classes:
        only_train = sorted(set(classes) - set(val_classes))[:5]
        only_val = sorted(set(val_classes) - set(classes))[:5]
        raise UserError(f"the class folders of {train} and {val} differ (only in train: "
                        f"{only_train or 'none'}, only in val: {only_val or 'none'}): both must hold "
                        "the same class folders")
    return classes, root


def list_images(split_dir: str, classes: list[str]) -> tuple[np.ndarray, torch.Tensor]:
    """(relative paths as a bytes array, int64 labels); a class folder without images is an error.
    Files of other extensions are left out, and how many of each is logged in one line."""
    files, labels, ignored = [], [], Counter()
    for label, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(split_dir, name), followlinks=True):
            dirnames.sort()
            rel = os.path.relpath(dirpath, split_dir)
            for f in sorted(filenames):
                if f.lower().endswith(EXTENSIONS):
                    found.append(os.path.join(rel, f))
                else:
                    ignored[os.path.splitext(f)[1].lower() or f] += 1
        if not found:
            raise UserError(f"class folder {os.path.join(split_dir, name)} holds no image "
                            f"({', '.join(EXTENSIONS)}): add its images or remove the folder "
                            "(from train/ and val/)")
        files += found
        labels += [label] * len(found)
    if ignored:
        kinds = ", ".join(f"{n} {ext}" for ext, n in ignored.most_common(5))
        log.info(f"{split_dir}: {len(files)} images; {sum(ignored.values())} files of other "
                 f"extensions left out ({kinds}{', ...' if len(ignored) > 5 else ''})")
    return np.array([os.fsencode(f) for f in files]), torch.tensor(labels, dtype=torch.int64)


class ImageFolderSource:
    """A DataSource (isda_exp.data.streams) over train/ and val/ class folders; see load_folder."""

    def __init__(self, name: str, root: str, classes: list[str], train: tuple, evaluation: tuple,
                 eval_split: str, transform: dict, mean, std, decode: str = "workers"):
        self.name, self.root, self.classes, self.num_classes = name, root, classes, len(classes)
        self.train_root, self.train_files, self.train_labels = train
        self.eval_root, self.eval_files, self.eval_labels = evaluation
        self.eval_split, self.transform = eval_split, transform
        self.mean, self.std = tuple(mean), tuple(std)  # the engine normalises with these
        self.bad = BadImages(root)
        self.num_workers = 0  # set by train_stream: the evaluation loader uses as many
        # decode=device: workers read bytes, batches are decoded on the device (folder_decode)
        self.make_loader = DeviceDecodeLoader if decode == "device" else None

    @property
    def num_train(self) -> int:
        return len(self.train_files)

    def train_stream(self, augment, batch_size: int, seed: int, device: torch.device,
                     num_workers: int, rank: int = 0, world: int = 1) -> FolderTrainStream:
        check_augment(augment)
        images = FolderImages(self.train_root, self.train_files, self.train_labels, self.transform, seed)
        self.num_workers = num_workers
        return FolderTrainStream(images, batch_size, seed, device, num_workers, self.bad, rank, world,
                                 self.make_loader)

    def eval_stream(self, device: torch.device, rank: int = 0, world: int = 1) -> FolderEvalStream:
        images = FolderImages(self.eval_root, self.eval_files, self.eval_labels, self.transform)
        return FolderEvalStream(images, self.eval_split, device, self.num_workers, self.bad, rank, world,
                                self.make_loader)


def check_augment(augment) -> None:
    """aug=baseline stands for the folder data set's own augmentation (RandomResizedCrop + flip,
    set by dataset.train_crop/scale/ratio); the CIFAR augmentations do not apply."""
    from ..cifar_augment import BatchAugment

    if not isinstance(augment, BatchAugment) or augment.cutout_length:
        raise UserError("an image-folder data set trains with its own augmentation "
                        "(RandomResizedCrop + flip, dataset.train_crop/scale/ratio): use aug=baseline")
    return {}


def load_folder(name: str, root: str | None, num_classes: int | None = None, train_crop: int = 224,
                eval_resize: int = 256, eval_crop: int = 224, scale=(0.08, 1.0),
                ratio=(3 / 4, 4 / 3), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                train_subset: int | None = None, test_subset: int | None = None,
                subset_seed: int = 0, validation: int | None = None,
                train_size: int | None = None, test_size: int | None = None,
                decode: str = "workers") -> ImageFolderSource:
    """An image-folder data set from `root` (see the module docstring).

    num_classes: the expected class count (checked; null: whatever the folders hold).
    train_size/test_size: the expected image counts (for `isda_exp.sweeps.plan`'s cost; a warning when
    the folders hold others). validation=N: evaluate on a seeded class-balanced hold-out of N
    training images instead of val/ (the lambda_0 protocol); train_subset/test_subset as on CIFAR.
    decode: "workers" (decode in the DataLoader workers) or "device" (isda_exp.data.folder.device_decode).
    """
    if root is None:
        raise UserError(f"dataset.root is not set: give dataset.root=DIR, a folder holding "
                        f"train/<class>/* and val/<class>/* images (dataset={name})")
    root = os.path.abspath(os.path.expanduser(str(root)))
    _check_transform(train_crop, eval_resize, eval_crop, scale, ratio, mean, std)
    check_decode(decode)
    classes, root = list_classes(root)
    if num_classes is not None and int(num_classes) != len(classes):
        raise UserError(f"dataset.num_classes={num_classes} but {root}/train holds {len(classes)} "
                        "class folders: fix the folders, or set dataset.num_classes=null")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    train_files, train_labels = list_images(train_dir, classes)
    eval_files, eval_labels = list_images(val_dir, classes)
    for split, expected, found in (("train", train_size, len(train_files)),
                                   ("test", test_size, len(eval_files))):
        if expected is not None and int(expected) != found:
            log.warning(f"{root}: {found} {split} images, dataset.{split}_size says {expected}")
    train, evaluation, split = (train_dir, train_files, train_labels), (val_dir, eval_files, eval_labels), "test"
    if validation is not None:
        held = class_balanced_holdout(train_labels, len(classes), validation, subset_seed)
        keep = torch.ones(len(train_labels), dtype=torch.bool)
        keep[held] = False
        evaluation = (train_dir, train_files[held.numpy()], train_labels[held])
        train = (train_dir, train_files[keep.numpy()], train_labels[keep])
        split = "holdout"
    train = _take(train, seeded_subset(len(train[1]), train_subset, subset_seed,
                                       seeding.TRAIN_SUBSET, "train"))
    evaluation = _take(evaluation, seeded_subset(len(evaluation[1]), test_subset, subset_seed,
                                                 seeding.TEST_SUBSET, "test"))
    transform = {"train_crop": int(train_crop), "eval_resize": int(eval_resize),
                 "eval_crop": int(eval_crop), "scale": tuple(map(float, scale)),
                 "ratio": tuple(map(float, ratio))}
    return ImageFolderSource(name, root, classes, train, evaluation, split, transform, mean, std,
                             decode)


def _take(part: tuple, idx: torch.Tensor | None) -> tuple:
    if idx is None:
        return part
    return part[0], part[1][idx.numpy()], part[2][idx]


def _check_transform(train_crop, eval_resize, eval_crop, scale, ratio, mean, std) -> None:
    for key, value in (("train_crop", train_crop), ("eval_resize", eval_resize),
                       ("eval_crop", eval_crop)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"dataset.{key}={value} is not allowed: use a size in pixels >= 1")
    if eval_crop > eval_resize:
        raise UserError(f"dataset.eval_crop={eval_crop} is larger than dataset.eval_resize="
                        f"{eval_resize}: the centre crop must fit the resized image (ImageNet: 224, 256)")
    for key, pair, low in (("scale", scale, 0.0), ("ratio", ratio, 0.0)):
        if len(pair) != 2 or not low < float(pair[0]) <= float(pair[1]):
            raise UserError(f"dataset.{key}={list(pair)} is not allowed: use [low, high] with "
                            f"0 < low <= high (ImageNet: scale [0.08, 1], ratio [0.75, 1.333])")
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != 3 or (key == "std" and min(map(float, values)) <= 0):
            raise UserError(f"dataset.{key}={list(values)} is not allowed: use three numbers per "
                            "RGB channel on the 0-1 scale (std > 0)")
