"""A generated, learnable segmentation set (dataset=seg_synthetic): smoke runs and tests without
any download, and a writer of the same scenes as a seg_folder layout (PNG files) for the file path.

Each scene is a textured grey background (class 0) with a few rectangles and discs; a shape's class
is told by its colour alone (class k has its own RGB mean, plus pixel noise), the shapes' sizes and
places are random, and a one-pixel ring around every shape is void (255), as VOC marks object
boundaries. A tiny network learns the colour cue in a few hundred iterations on the CPU.
"""
from __future__ import annotations

import os

import numpy as np

from .labels import VOID
from .source import TASK, make_source
from .pairs import MemoryPairs


def palette(num_classes: int) -> np.ndarray:
    """RGB means of the shape classes 1..K-1 (row k), far apart; row 0 is the background's grey."""
    hues = np.linspace(0, 1, num_classes, endpoint=False)[1:] if num_classes > 1 else np.zeros(0)
    rows = [(128.0, 128.0, 128.0)]
    for h in hues:
        k = (np.array([0, 2 / 3, 1 / 3]) + h) % 1
        rows.append(tuple(60 + 150 * np.clip(np.abs(k * 6 - 3) - 1, 0, 1)))
    return np.array(rows)


def make_scene(rng: np.random.Generator, height: int, width: int, num_classes: int):
    """(uint8 [H, W, 3] image, uint8 [H, W] mask) of one scene."""
    colours = palette(num_classes)
    yy, xx = np.mgrid[0:height, 0:width]
    img = colours[0] + 25 * np.sin(0.7 * xx + rng.uniform(0, 6))[..., None] * np.ones(3)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, num_classes)) if num_classes > 1 else 0
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.12, 0.3) * min(height, width)
        if rng.random() < 0.5:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            ring = ((yy - cy) ** 2 + (xx - cx) ** 2 < (r + 1) ** 2) & ~inside
        else:
            inside = (abs(yy - cy) < r) & (abs(xx - cx) < r * 0.8)
            ring = (abs(yy - cy) < r + 1) & (abs(xx - cx) < r * 0.8 + 1) & ~inside
        img[inside] = colours[k]
        mask[inside], mask[ring & (mask != VOID)] = k, VOID
    img = img + rng.normal(0, 30, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def scenes(n: int, size, num_classes: int, seed: int):
    """n scenes of sizes drawn from `size` ([H, W], or a list of them)."""
    rng = np.random.default_rng(seed)
    sizes = [tuple(size)] if isinstance(size[0], int) else [tuple(s) for s in size]
    out = [make_scene(rng, *sizes[int(rng.integers(len(sizes)))], num_classes) for _ in range(n)]
    return [o[0] for o in out], [o[1] for o in out]


def load_generated(name: str = "seg_synthetic", num_classes: int = 4, train_size: int = 64,
                   test_size: int = 16, image_size=((72, 96), (80, 80)), data_seed: int = 1234,
                   task: str = TASK, **options):
    """The generated set as a data source (in memory; train and val drawn from one stream)."""
    images, masks = scenes(train_size + test_size, image_size, num_classes, data_seed)
    train = MemoryPairs(images[:train_size], masks[:train_size])
    val = MemoryPairs(images[train_size:], masks[train_size:])
    names = ("background", *(f"shape{k}" for k in range(1, num_classes)))
    return make_source(name, names, train, val, options)


def write_seg_folder(root: str, train: int, val: int, size=(72, 96), num_classes: int = 4,
                     seed: int = 0, palette_masks: bool = True) -> str:
    """The scenes as ROOT/images/{train,val}/NAME.png and ROOT/masks/{train,val}/NAME.png (palette
    PNGs when palette_masks, else grey 'L' PNGs) plus classes.txt: a seg_folder data set."""
    from PIL import Image

    images, masks = scenes(train + val, size, num_classes, seed)
    for i, (img, mask) in enumerate(zip(images, masks)):
        split = "train" if i < train else "val"
        for kind in ("images", "masks"):
            os.makedirs(os.path.join(root, kind, split), exist_ok=True)
        Image.fromarray(img).save(os.path.join(root, "images", split, f"scene{i:04d}.png"))
        m = Image.fromarray(mask)  # mode L: the stored values are the class indices
        if palette_masks:  # mode P: the stored values are palette indices, shown in colour
            m = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
            m.putpalette([int(v) for row in palette(num_classes) for v in row] + [255] * 3 * (256 - num_classes))
        m.save(os.path.join(root, "masks", split, f"scene{i:04d}.png"))
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(["background", *(f"shape{k}" for k in range(1, num_classes))]) + "\n")
    return root
