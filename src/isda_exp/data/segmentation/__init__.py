"""Semantic segmentation data (Table 7): Cityscapes, PASCAL VOC 2012, a user's folder of images
and class-index masks, and a generated learnable set; the label tables (labels.py), the one image
reader and the mask reader (files.py), the (image, mask) pairs (pairs.py), the joint transforms
(transforms.py), the iteration-based streams (streams.py) and the data sources (source.py)."""
from .generated import load_generated, write_seg_folder
from .labels import CITYSCAPES_CLASSES, CITYSCAPES_TRAIN_IDS, VOC_CLASSES, VOID, cityscapes_lut
from .source import TASK, SegmentationSource, load_cityscapes, load_seg_folder, load_voc

__all__ = ["load_cityscapes", "load_voc", "load_seg_folder", "load_generated", "write_seg_folder",
           "SegmentationSource", "TASK", "VOID", "CITYSCAPES_CLASSES", "CITYSCAPES_TRAIN_IDS",
           "VOC_CLASSES", "cityscapes_lut"]
