"""The data a run trains on: the batch-stream interface the loop knows (streams.py) and its
in-memory implementation (memory.py); CIFAR arrays (cifar.py) and a generated set (synthetic.py);
seeded subsets and the hold-out (subsets.py); CIFAR augmentation (cifar_augment.py); the
normalisation every source's uint8 batches get (normalize.py); image folders decoded on the fly
(the folder/ subpackage, imported on its own: it needs torchvision's image I/O); segmentation data
sets (the segmentation/ subpackage, imported on its own too)."""
from .cifar import Arrays, load_cifar, read_npz, take_subsets
from .cifar_augment import AutoAugmentDataset, BatchAugment, build_augment
from .normalize import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, normalize
from .streams import DataSource, EvalStream, TrainStream
from .synthetic import load_synthetic

__all__ = ["Arrays", "load_cifar", "load_synthetic", "read_npz", "take_subsets", "build_augment",
           "BatchAugment", "AutoAugmentDataset", "normalize", "CIFAR_MEAN", "CIFAR_STD",
           "IMAGENET_MEAN", "IMAGENET_STD", "DataSource", "TrainStream", "EvalStream"]
