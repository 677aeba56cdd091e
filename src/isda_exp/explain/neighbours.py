"""Augmented neighbours: each augmented feature shown as its nearest training image (Euclidean
distance in feature space) with the classifier's prediction; and, over many training images, how
often the augmented feature keeps its label, against lambda."""
from __future__ import annotations

import numpy as np
import torch

from .sampling import Sampler, logits

METRIC = "euclidean"


def nearest(train_feats: np.ndarray, queries: torch.Tensor,
            chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(index, distance) of the nearest training feature to each query, chunk by chunk over the
    (memory-mapped) training features."""
    q = queries.double()
    best_d = torch.full((len(q),), float("inf"), dtype=torch.float64)
    best_i = torch.zeros(len(q), dtype=torch.int64)
    for lo in range(0, len(train_feats), chunk):
        block = torch.from_numpy(np.array(train_feats[lo:lo + chunk], dtype=np.float64))
        d, i = torch.cdist(q, block).min(1)
        better = d < best_d
        best_d[better], best_i[better] = d[better], i[better] + lo
    return best_i.numpy(), best_d.numpy()


def augmented_neighbours(sampler: Sampler, fc, train_feats: np.ndarray, train_labels: torch.Tensor,
                         feat: torch.Tensor, label: int, lam: float, n: int) -> dict:
    """n draws around one feature: each draw's nearest training image and prediction."""
    draws = sampler.draw(feat.view(1, -1), torch.tensor([label]), lam, n)[0]
    idx, dist = nearest(train_feats, draws)
    prob = torch.softmax(logits(fc, draws), 1)
    pred = prob.argmax(1)
    return {"lambda": lam, "nearest_train": idx.tolist(), "distance": dist.tolist(),
            "nearest_labels": train_labels[torch.from_numpy(idx)].tolist(),
            "prediction": pred.tolist(), "prob_of_label": prob[:, label].tolist(),
            "prob_of_prediction": prob.max(1).values.tolist(),
            "shift_norm": (draws - feat.double()).norm(dim=1).tolist()}


def keep_rates(sampler: Sampler, fc, feats: torch.Tensor, labels: torch.Tensor,
               lambdas: list[float], n: int, chunk: int = 256) -> list[dict]:
    """Per lambda: the fraction of draws predicted as their label, and as the un-augmented
    feature's own prediction (n draws per feature)."""
    base = logits(fc, feats).argmax(1)
    out = []
    for lam in lambdas:
        keep = same = 0
        for lo in range(0, len(labels), chunk):
            y, b = labels[lo:lo + chunk], base[lo:lo + chunk]
            pred = logits(fc, sampler.draw(feats[lo:lo + chunk], y, lam, n)).argmax(2)
            keep += int((pred == y.unsqueeze(1)).sum())
            same += int((pred == b.unsqueeze(1)).sum())
        total = len(labels) * n
        out.append({"lambda": lam, "keep_label": keep / total, "keep_prediction": same / total,
                    "draws": total})
    return out
