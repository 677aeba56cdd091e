"""A small generated, learnable data set of 32x32 RGB images (dataset=synthetic): a run, a
smoke table or a test without any download."""
from __future__ import annotations

import numpy as np

from .cifar import Arrays, _from_numpy, read_npz, take_subsets


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
