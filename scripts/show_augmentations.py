#!/usr/bin/env python3
"""Write a PNG grid of CIFAR images under each augmentation, for a person to eyeball.

Rows: original, baseline (crop+flip), cutout, autoaugment; one column per class.

    python scripts/show_augmentations.py [--npz CIFAR.npz] [--out outputs/augmentations.png]

Without --npz it unpacks CIFAR-10 from ../shared/data into a temp dir (about 15 s); when that
is absent it falls back to random synthetic images and says so in the title.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from isda_exp.data.cifar_augment import AutoAugmentDataset, BatchAugment

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def load_images(npz: Path | None, n: int) -> tuple[np.ndarray, list[str], str]:
    """n training images [n, 32, 32, 3], one per class where possible, captions and a source note."""
    if npz is None and (SHARED_DATA / "cifar10.pack.npz").is_file():
        tmp = Path(tempfile.mkdtemp()) / "cifar10.npz"
        print(f"unpacking CIFAR-10 from {SHARED_DATA} into {tmp} ...", flush=True)
        subprocess.run([sys.executable, str(SHARED_DATA / "unpack_cifar.py"), "cifar10", str(tmp)], check=True)
        npz = tmp
    if npz is None:
        print("no CIFAR data found (no --npz, no ../shared/data): using random synthetic images")
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), [""] * n, "SYNTHETIC random images"
    data = np.load(npz)
    x, y = data["x_train"], data["y_train"]
    names = [str(c) for c in data["classes"]] if "classes" in data.files else [str(c) for c in range(y.max() + 1)]
    firsts = [int(np.flatnonzero(y == c)[0]) for c in range(min(n, len(names)))]
    picks = (firsts + [i for i in range(len(x)) if i not in firsts])[:n]
    return x[picks], [names[y[i]] for i in picks], f"real images from {npz.name}"


def augment_rows(images: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The four rows, each [n, 32, 32, 3] uint8."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    gen = torch.Generator().manual_seed(seed)
    aa = AutoAugmentDataset(x, torch.zeros(len(x), dtype=torch.long), seed=seed, cutout_length=16)
    rows = {
        "original": x,
        "baseline": BatchAugment(0)(x, gen),
        "cutout 16": BatchAugment(16)(x, gen),
        "autoaugment": torch.stack([aa[(0, i)][0] for i in range(len(x))]),
    }
    return {k: v.permute(0, 2, 3, 1).numpy() for k, v in rows.items()}


def save_grid(rows: dict[str, np.ndarray], captions: list[str], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(captions)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1, 1.4 * len(rows) + 0.6), squeeze=False)
    for r, (label, imgs) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(imgs[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(captions[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, help="CIFAR npz as written by shared/data/unpack_cifar.py")
    parser.add_argument("--out", type=Path, default=Path("outputs/augmentations.png"))
    parser.add_argument("--n", type=int, default=10, help="images (columns)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.npz is not None and not args.npz.is_file():
        parser.error(f"--npz {args.npz} does not exist; write one with shared/data/unpack_cifar.py")
    if args.n < 1:
        parser.error("--n must be >= 1")
    images, captions, source = load_images(args.npz, args.n)
    save_grid(augment_rows(images, args.seed), captions, f"CIFAR augmentations ({source}, seed {args.seed})", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
