"""Every random stream of a run, named in one place.

A run's randomness is a function of its seed alone: each use draws from its own stream, seeded by
`mix_seed(seed, ...)` with a fixed stream number. The numbers are part of the results (changing
one changes every run's numbers), so they are listed here once and never reused.
"""
from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1

# stream numbers of mix_seed (their position in the key is part of the stream, see each function)
INIT = 0            # the model's initial weights: (seed, 0, INIT)
ORDER = 1           # an epoch's training order: (seed, epoch, ORDER)
BATCH_AUGMENT = 2   # a batch's crops, flips and holes: (seed, epoch, BATCH_AUGMENT, batch)
TRAIN_NOISE = 3     # dropout and shake-shake draws of an epoch: (seed, epoch, TRAIN_NOISE[, rank])
DISTURB = 4         # DisturbLabel's label noise: (seed, epoch, DISTURB, step)
SEG_NOISE = 5       # dropout draws of a segmentation run (no epochs): (seed, 0, SEG_NOISE, rank)
TRAIN_SUBSET = 11   # dataset.train_subset: (subset_seed, TRAIN_SUBSET)
TEST_SUBSET = 12    # dataset.test_subset: (subset_seed, TEST_SUBSET)
HOLDOUT = 13        # dataset.validation's hold-out: (subset_seed, HOLDOUT)

# item_seed streams of one image's per-image augmentation (AutoAugment pipeline)
ITEM_CROP = 0       # crop, flip and Cutout of the image
ITEM_POLICY = 1     # torchvision AutoAugment's draws
ITEM_SEG = 2        # a segmentation pair's scale, crop and flip (data.segmentation.transforms)


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, stream...), never a plain sum."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def init_seed(seed: int) -> int:
    return mix_seed(seed, 0, INIT)


def order_seed(seed: int, epoch: int) -> int:
    return mix_seed(seed, epoch, ORDER)


def batch_augment_seed(seed: int, epoch: int, batch: int) -> int:
    return mix_seed(seed, epoch, BATCH_AUGMENT, batch)


def train_noise_seed(seed: int, epoch: int, rank: int | None = None) -> int:
    """Dropout and shake-shake: one stream per epoch, and per rank when several ranks train."""
    return mix_seed(seed, epoch, TRAIN_NOISE, *([] if rank is None else [rank]))


def seg_noise_seed(seed: int, rank: int = 0) -> int:
    """Dropout of a segmentation run: seeded once at its start, per rank (then checkpointed)."""
    return mix_seed(seed, 0, SEG_NOISE, rank)


def disturb_seed(seed: int, epoch: int, step: int) -> int:
    return mix_seed(seed, epoch, DISTURB, step)


def subset_seed(seed: int, stream: int) -> int:
    """The data's subsets and hold-out: a function of dataset.subset_seed, not the run seed."""
    return mix_seed(seed, stream)


def _splitmix64(z: int) -> int:
    """SplitMix64 finaliser: a bijective, well-mixed 64-bit hash of z."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def item_seed(seed: int, epoch: int, index: int, stream: int = ITEM_CROP) -> int:
    """64-bit seed of one image's augmentation in one epoch (cheap: called per image in workers)."""
    h = _splitmix64(seed & _MASK64)
    for part in (epoch, index, stream):
        h = _splitmix64(h ^ (part & _MASK64))
    return h
