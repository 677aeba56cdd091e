#!/usr/bin/env python
"""Write a synthetic stand-in for a CIFAR .npz (same arrays and shapes, generated images).

The smoke tables use it when no real data is given, so that every cell runs the same code path
(dataset=cifar10/cifar100 with dataset.npz=...) offline. Usage:
    python scripts/synthetic_npz.py OUT.npz --num-classes 100 [--train 1000 --test 500]
"""
import argparse
import os
from pathlib import Path

import numpy as np

from isda_exp.data import load_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    d = load_synthetic(num_classes=a.num_classes, train_size=a.train, test_size=a.test, data_seed=a.seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(a.out.name + ".tmp.npz")
    np.savez(tmp, x_train=d.x_train.permute(0, 2, 3, 1).numpy(), y_train=d.y_train.numpy(),
             x_test=d.x_test.permute(0, 2, 3, 1).numpy(), y_test=d.y_test.numpy())
    os.replace(tmp, a.out)
    print(f"wrote {a.out}: {a.train} train / {a.test} test synthetic images, {a.num_classes} classes")


if __name__ == "__main__":
    main()
