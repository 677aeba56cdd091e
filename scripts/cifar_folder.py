#!/usr/bin/env python
"""Write CIFAR images (an .npz of x_train, y_train, x_test, y_test) as an image-folder data set of
real JPEGs (every --png-every-th image as PNG): OUT/train/<class>/*.jpg and OUT/val/<class>/*.jpg,
upscaled to --size pixels. For the table4 smoke run and the folder tests; deterministic.

Usage:
    python scripts/cifar_folder.py cifar10.npz OUT [--train-per-class 100 --val-per-class 20 --size 64]
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF


def write_split(out: Path, x: np.ndarray, y: np.ndarray, per_class: int, size: int, quality: int,
                png_every: int) -> int:
    """The first per_class images of each class, upscaled (bilinear) and encoded."""
    written = 0
    for c in sorted(set(y.tolist())):
        folder = out / f"class{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(y == c)[:per_class]):
            img = torch.from_numpy(np.ascontiguousarray(x[i].transpose(2, 0, 1)))
            img = TF.resize(img, [size, size], antialias=True)
            pil = Image.fromarray(img.permute(1, 2, 0).numpy())  # Pillow: torchvision's encoders are deprecated
            if png_every and k % png_every == png_every - 1:
                pil.save(folder / f"{i:05d}.png")
            else:
                pil.save(folder / f"{i:05d}.jpg", quality=quality)
            written += 1
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npz", type=Path, help="arrays x_train uint8 [N,H,W,3], y_train, x_test, y_test")
    ap.add_argument("out", type=Path)
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--classes", type=int, default=None, help="only the first N classes")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--png-every", type=int, default=10, help="every N-th image as PNG (0: none)")
    a = ap.parse_args(argv)
    with np.load(a.npz) as f:
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    keep = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        mask = y < a.classes if a.classes else np.ones(len(y), bool)
        keep[split] = (x[mask], y[mask])
    tmp = a.out.with_name(a.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    n_train = write_split(tmp / "train", *keep["train"], a.train_per_class, a.size, a.quality, a.png_every)
    n_val = write_split(tmp / "val", *keep["test"], a.val_per_class, a.size, a.quality, a.png_every)
    shutil.rmtree(a.out, ignore_errors=True)
    os.replace(tmp, a.out)
    print(f"{a.out}: {n_train} training and {n_val} validation images, {a.size}x{a.size}")


if __name__ == "__main__":
    main()
