"""Penultimate features of every image, computed once in batches and cached beside the run.

The cache is a .npy per split in RUN_DIR/explain/cache/, named by the checkpoint (epoch + content
hash) and the data (its config and labels): new weights or other data mean a new file. It is
written batch by batch through a memory map and read back memory-mapped, so neither the images nor
the features of a large data set need to fit in memory; the rest of explain reads rows of it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from omegaconf import OmegaConf

from ..data.normalize import normalize
from ..rundir.files import disk_errors

CACHE = "cache"


@torch.inference_mode()
def extract(net: torch.nn.Module, stream: Iterable[torch.Tensor], count: int, path: Path,
            device: torch.device, norm: tuple | None = None) -> np.ndarray:
    """Features [count, A] float32 of the uint8 batches in `stream`, written to `path` (.npy);
    `norm`: the data source's (mean, std), None for CIFAR's (as the run's engine normalised)."""
    net.to(device).eval()
    tmp = path.with_name(f".{path.name}.tmp")
    with disk_errors(path):
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(count, net.feature_dim))
        done = 0
        for x in stream:
            feats = net(normalize(x.to(device), norm)).float().cpu().numpy()
            out[done:done + len(feats)] = feats
            done += len(feats)
        if done != count:
            raise RuntimeError(f"the image stream gave {done} images, expected {count}")
        out.flush()
        del out
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def cached_features(cache_dir: Path, split: str, key: str, net: torch.nn.Module, images,
                    device: torch.device, batch_size: int, norm: tuple | None = None) -> np.ndarray:
    """The split's features from the cache when it holds this key, else computed and cached.
    `images`: an explain.source.Images (its batches are read only when the cache misses)."""
    path = cache_dir / f"features-{split}-{key}.npy"
    if path.is_file():
        try:
            feats = np.load(path, mmap_mode="r", allow_pickle=False)
            if feats.shape == (len(images), net.feature_dim):
                return feats
        except (ValueError, OSError):
            pass  # a damaged cache file: computed again
    cache_dir.mkdir(parents=True, exist_ok=True)
    feats = extract(net, images.batches(batch_size), len(images), path, device, norm)
    for stale in cache_dir.glob(f"features-{split}-*.npy"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return feats


def data_key(dataset_cfg, labels: torch.Tensor) -> str:
    """A short hash of the data set's config (without where it is stored) and its labels."""
    node = OmegaConf.to_container(dataset_cfg, resolve=False)
    node = {k: v for k, v in node.items() if k not in ("root", "download", "npz")}
    digest = hashlib.sha256(json.dumps(node, sort_keys=True, default=str).encode())
    digest.update(labels.numpy().astype(np.int64).tobytes())
    return digest.hexdigest()[:10]


def rows(feats: np.ndarray, index) -> torch.Tensor:
    """Some rows of a (memory-mapped) feature array as a float64 tensor."""
    return torch.from_numpy(np.array(feats[np.asarray(index)], dtype=np.float64))
