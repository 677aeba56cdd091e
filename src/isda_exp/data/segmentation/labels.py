"""The label tables of the segmentation data sets: Cityscapes' 34 label ids -> its 19 train ids
(the official table of cityscapesScripts' labels.py), the class names, and the lookup table every
mask goes through (mask value -> class index, VOID for pixels not trained on, UNKNOWN for a value
the data set does not define, which is refused)."""
from __future__ import annotations

import numpy as np

VOID = 255  # the one void label downstream (isda_exp.losses.pixel_isda.VOID)
UNKNOWN = -1

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                      "truck", "bus", "train", "motorcycle", "bicycle")
# label id -> train id for ids 0..33 (255: not evaluated; -1, the licence plate, is stored as 255)
CITYSCAPES_TRAIN_IDS = (255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255,
                        5, 255, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18)
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


def cityscapes_lut() -> np.ndarray:
    """Mask value -> train id for the gtFine *_labelIds.png masks (255 void; 34..254 unknown)."""
    lut = np.full(256, UNKNOWN, dtype=np.int16)
    lut[:len(CITYSCAPES_TRAIN_IDS)] = CITYSCAPES_TRAIN_IDS
    lut[255] = VOID
    return lut


def index_lut(num_classes: int, ignore_index: int | None = VOID) -> np.ndarray:
    """Class-index masks: value k < num_classes is class k, ignore_index is void, the rest unknown."""
    lut = np.full(256, UNKNOWN, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    if ignore_index is not None and 0 <= ignore_index < 256:
        lut[ignore_index] = VOID
    return lut
