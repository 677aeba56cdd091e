"""Segmentation data sources (what a `dataset` config with `task: segmentation` builds): a user's
folder (`load_seg_folder`), Cityscapes (`load_cityscapes`), PASCAL VOC 2012 (`load_voc`); the
generated set is isda_exp.data.segmentation.generated's.

Every source holds its (image, mask) pairs (isda_exp.data.segmentation.pairs) with the masks'
values mapped to class indices (VOID = 255 for pixels not trained on, whatever the data set's own
ignore value), and makes the iteration-based training stream and the whole-image evaluation
stream (streams.py). Normalisation constants (0-1 scale, RGB) are the engine's to apply.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import torch

from ... import seeding
from ...errors import UserError
from ..subsets import seeded_subset
from .labels import CITYSCAPES_CLASSES, VOC_CLASSES, cityscapes_lut, index_lut
from .pairs import FilePairs, MemoryPairs, matched_files
from .streams import SegEvalStream, SegTrainStream

TASK = "segmentation"
log = logging.getLogger("isda_exp")
EVAL_MODES = ("sliding", "whole")
SCALES = tuple(round(0.7 + k / 10, 1) for k in range(15))  # the authors' 0.7, 0.8, ..., 2.1


@dataclass
class SegmentationSource:
    """A segmentation data set: its classes, pairs, transforms and evaluation protocol."""

    name: str
    class_names: tuple[str, ...]
    train: object  # FilePairs | MemoryPairs
    val: object
    crop_size: int
    train_scales: tuple[float, ...]
    flip: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    evaluation: dict = field(default_factory=dict)  # mode, crop, stride, scales, flip
    eval_split: str = "val"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train(self) -> int:
        return len(self.train)

    def train_stream(self, batch_size: int, seed: int, total: int, device: torch.device,
                     num_workers: int, rank: int = 0, world: int = 1) -> SegTrainStream:
        return SegTrainStream(self.train, self.crop_size, self.train_scales, self.flip, batch_size,
                              seed, total, device, num_workers, rank, world)

    def eval_stream(self, device: torch.device, num_workers: int, rank: int = 0,
                    world: int = 1) -> SegEvalStream:
        return SegEvalStream(self.val, self.eval_split, device, num_workers, rank, world)


def make_source(name: str, class_names, train, val, options: dict) -> SegmentationSource:
    """The source after checking the options every loader shares and taking the subsets.
    train_size / test_size (expected counts) and eval_image_size are the cost estimate's
    (isda_exp.sweeps.plan): a warning when the data holds other counts."""
    options = dict(options)
    options.pop("eval_image_size", None)
    for split, pairs in (("train", train), ("test", val)):
        expected = options.pop(f"{split}_size", None)
        if expected is not None and int(expected) != len(pairs):
            log.warning(f"{name}: {len(pairs)} {split} images, dataset.{split}_size says {expected}")
    o = check_options(**options)
    train = _subset(train, o.pop("train_subset"), o["subset_seed"], seeding.TRAIN_SUBSET, "train")
    val = _subset(val, o.pop("test_subset"), o.pop("subset_seed"), seeding.TEST_SUBSET, "test")
    for pairs in (train, val):
        pairs.check_sizes()
    return SegmentationSource(name, tuple(class_names), train, val, **o)


def _subset(pairs, n, seed: int, stream: int, split: str):
    idx = seeded_subset(len(pairs), n, seed, stream, split)
    if idx is None:
        return pairs
    if isinstance(pairs, MemoryPairs):
        return MemoryPairs([pairs.images[i] for i in idx], [pairs.masks[i] for i in idx])
    out = FilePairs([], [], pairs.lut, pairs.num_classes)
    out.images, out.masks = pairs.images[idx.numpy()], pairs.masks[idx.numpy()]
    return out


def check_options(crop_size, train_scales, flip, mean, std, evaluation, train_subset=None,
                  test_subset=None, subset_seed=0) -> dict:
    """The shared options, each refused in one line naming the key and what it takes."""
    if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 8:
        raise UserError(f"dataset.crop_size={crop_size} is not allowed: use a size in pixels >= 8 "
                        "(the authors' Cityscapes crop: 769)")
    scales = tuple(float(s) for s in train_scales)
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
        raise UserError(f"dataset.train_scales={list(train_scales)} is not allowed: use a list of "
                        "factors > 0 (the authors': 0.7, 0.8, ..., 2.1)")
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != 3 or (key == "std" and min(map(float, values)) <= 0):
            raise UserError(f"dataset.{key}={list(values)} is not allowed: use three numbers per RGB "
                            "channel on the 0-1 scale (std > 0)")
    return {"crop_size": crop_size, "train_scales": scales, "flip": bool(flip),
            "mean": tuple(map(float, mean)), "std": tuple(map(float, std)),
            "evaluation": check_evaluation(dict(evaluation)), "train_subset": train_subset,
            "test_subset": test_subset, "subset_seed": int(subset_seed)}


def check_evaluation(e: dict) -> dict:
    """dataset.evaluation: mode (sliding | whole), crop, stride, scales (the final multi-scale
    evaluation's), flip."""
    mode, crop, stride = e.get("mode", "sliding"), e.get("crop"), e.get("stride")
    if mode not in EVAL_MODES:
        raise UserError(f"dataset.evaluation.mode={mode} is not allowed: use sliding (windows of "
                        "evaluation.crop, the authors') or whole (the whole image at once)")
    if mode == "sliding" and not (isinstance(crop, int) and isinstance(stride, int) and 0 < stride <= crop):
        raise UserError(f"dataset.evaluation crop={crop} stride={stride} is not allowed: use window "
                        "sizes in pixels with 0 < stride <= crop (the authors': 769 and 513)")
    scales = tuple(float(s) for s in e.get("scales") or (1.0,))
    if not all(math.isfinite(s) and s > 0 for s in scales):
        raise UserError(f"dataset.evaluation.scales={list(scales)} is not allowed: use factors > 0")
    return {"mode": mode, "crop": crop, "stride": stride, "scales": scales,
            "flip": bool(e.get("flip", False))}


def _names(class_names, num_classes: int, root: str) -> tuple[str, ...]:
    """Class names from a file (one per line; default ROOT/classes.txt if present), else class<k>."""
    path = class_names or os.path.join(root, "classes.txt")
    if not os.path.isfile(path):
        if class_names:
            raise UserError(f"dataset.class_names={class_names} does not exist: give a text file "
                            "with one class name per line, or null")
        return tuple(f"class{k}" for k in range(num_classes))
    names = tuple(line.strip() for line in open(path, encoding="utf-8") if line.strip())
    if len(names) != num_classes:
        raise UserError(f"{path} names {len(names)} classes but dataset.num_classes={num_classes}: "
                        "give one name per class, one per line")
    return names


def _root(root, name: str, layout: str) -> str:
    if root is None:
        raise UserError(f"dataset.root is not set: give dataset.root=DIR, a folder holding {layout} "
                        f"(dataset={name})")
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise UserError(f"dataset.root={root} does not exist: give a folder holding {layout}")
    return root


def _dir(path: str, layout: str) -> str:
    if not os.path.isdir(path):
        raise UserError(f"{path} does not exist: the layout is {layout}")
    return path


def load_seg_folder(name: str, root, num_classes, ignore_index: int | None = 255,
                    class_names: str | None = None, task: str = TASK, **options) -> SegmentationSource:
    """A user's DIR/images/{train,val}/NAME.jpg|png with DIR/masks/{train,val}/NAME.png masks of
    class indices 0..num_classes-1 (ignore_index: the value not trained on)."""
    layout = "images/{train,val}/NAME.jpg|png and masks/{train,val}/NAME.png"
    root = _root(root, name, layout)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes < 255:
        raise UserError(f"dataset.num_classes={num_classes} is not allowed: give the number of "
                        "classes of the masks (1..254)")
    if ignore_index is not None and not (isinstance(ignore_index, int) and 0 <= ignore_index <= 255):
        raise UserError(f"dataset.ignore_index={ignore_index} is not allowed: use a mask value "
                        "0..255 (or null: every value is a class)")
    if ignore_index is not None and ignore_index < num_classes:
        raise UserError(f"dataset.ignore_index={ignore_index} is one of the {num_classes} classes: use "
                        "a value >= dataset.num_classes (e.g. 255)")
    lut = index_lut(num_classes, ignore_index)
    splits = [FilePairs(*matched_files(_dir(os.path.join(root, "images", s), layout),
                                       _dir(os.path.join(root, "masks", s), layout)), lut, num_classes)
              for s in ("train", "val")]
    return make_source(name, _names(class_names, num_classes, root), *splits, options)


def load_cityscapes(name: str = "cityscapes", root=None, num_classes: int = 19, task: str = TASK,
                    **options) -> SegmentationSource:
    """Cityscapes fine: leftImg8bit/{train,val}/CITY/*_leftImg8bit.png with
    gtFine/{train,val}/CITY/*_gtFine_labelIds.png, label ids mapped to the 19 train ids."""
    layout = "leftImg8bit/{train,val}/CITY/*_leftImg8bit.png and gtFine/{train,val}/CITY/*_gtFine_labelIds.png"
    root = _root(root, name, layout)
    _fixed_classes(num_classes, 19, name)
    lut = cityscapes_lut()
    splits = [FilePairs(*matched_files(_dir(os.path.join(root, "leftImg8bit", s), layout),
                                       _dir(os.path.join(root, "gtFine", s), layout),
                                       "_gtFine_labelIds.png", "_leftImg8bit.png"), lut, 19)
              for s in ("train", "val")]
    return make_source(name, CITYSCAPES_CLASSES, *splits, options)


def load_voc(name: str = "voc", root=None, num_classes: int = 21, augmented: bool = False,
             augmented_masks: str = "SegmentationClassAug",
             augmented_list: str = "ImageSets/Segmentation/train_aug.txt", task: str = TASK,
             **options) -> SegmentationSource:
    """PASCAL VOC 2012 (ROOT = VOCdevkit/VOC2012): JPEGImages/NAME.jpg, SegmentationClass/NAME.png
    (palette masks, 255 on the boundaries) and the lists ImageSets/Segmentation/{train,val}.txt;
    augmented=true trains on the 10,582 images of SBD's augmented set (augmented_list, masks in
    augmented_masks), evaluating on the same 1,449 val images."""
    layout = "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/{train,val}.txt"
    root = _root(root, name, layout)
    _fixed_classes(num_classes, 21, name)
    lut = index_lut(21, 255)
    train_list = augmented_list if augmented else "ImageSets/Segmentation/train.txt"
    train_masks = augmented_masks if augmented else "SegmentationClass"
    train = _voc_pairs(root, train_list, train_masks, lut, layout)
    val = _voc_pairs(root, "ImageSets/Segmentation/val.txt", "SegmentationClass", lut, layout)
    return make_source(name, VOC_CLASSES, train, val, options)


def _fixed_classes(num_classes, fixed: int, name: str) -> None:
    if num_classes != fixed:
        raise UserError(f"dataset.num_classes={num_classes} but {name} has {fixed} classes: leave it "
                        f"at {fixed} (dataset=seg_folder takes a class count of your own)")


def _voc_pairs(root: str, listing: str, masks: str, lut, layout: str) -> FilePairs:
    path = os.path.join(root, listing)
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist: the layout is {layout}")
    names = [line.split()[0] for line in open(path, encoding="utf-8") if line.strip()]
    images = [os.path.join(root, "JPEGImages", f"{n}.jpg") for n in names]
    mask_files = [os.path.join(root, masks, f"{n}.png") for n in names]
    missing = [p for p in images + mask_files if not os.path.isfile(p)]
    if missing:
        raise UserError(f"{len(missing)} files listed in {path} are missing (e.g. {missing[0]}): "
                        "every listed name needs JPEGImages/NAME.jpg and its mask NAME.png")
    return FilePairs(images, mask_files, lut, 21)
