"""Semantic directions: the top eigenvectors of a class covariance, and the class's training
images ordered by their projection on each (a strip from the lowest to the highest)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def eigen(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues descending, eigenvectors as columns) of a symmetric matrix, float64.

    Each vector's sign is fixed (its largest-magnitude entry positive) so reruns agree; a
    direction's two ends are otherwise interchangeable.
    """
    values, vectors = torch.linalg.eigh(cov.double())
    values, vectors = values.flip(0), vectors.flip(1)
    peak = vectors.abs().argmax(0)
    signs = torch.sign(vectors[peak, torch.arange(vectors.shape[1])])
    return values, vectors * torch.where(signs == 0, 1.0, signs)


def spectrum(values: torch.Tensor) -> dict:
    """Eigenvalues (clamped at 0) and how many directions carry 50/90/99% of the variance."""
    v = values.double().clamp(min=0).numpy()
    total = float(v.sum())
    cumulative = np.cumsum(v) / total if total > 0 else np.zeros_like(v)
    need = {f"directions_for_{p}pct": int(np.searchsorted(cumulative, p / 100 - 1e-9) + 1)
            if total > 0 else None for p in (50, 90, 99)}
    return {"eigenvalues": v.tolist(), "cumulative_fraction": cumulative.tolist(),
            "trace": total, **need}


@dataclass
class Direction:
    rank: int                 # 0 = the top eigenvector
    eigenvalue: float
    fraction: float           # of the class's total variance
    order: np.ndarray         # training indices of the class, by projection, lowest first
    projections: np.ndarray   # their projections, same order
    strip: list[int]          # the training indices shown, lowest to highest
    strip_projections: list[float]


def order_along(feats: torch.Tensor, index: np.ndarray,
                vector: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The images `index` (features `feats`) sorted by (a - mean) . vector, lowest first."""
    proj = ((feats - feats.mean(0)) @ vector.double()).numpy()
    perm = np.argsort(proj, kind="stable")
    return index[perm], proj[perm]


def strip_positions(n: int, count: int) -> list[int]:
    """`count` evenly spaced ranks of n, both ends included."""
    return sorted(set(np.round(np.linspace(0, n - 1, min(count, n))).astype(int).tolist()))


def class_directions(feats: torch.Tensor, index: np.ndarray, cov: torch.Tensor, k: int,
                     strip: int) -> tuple[list[Direction], dict]:
    """The top-k directions of one class with their strips, and the class's spectrum."""
    values, vectors = eigen(cov)
    spec = spectrum(values)
    total = spec["trace"] or 1.0
    out = []
    for r in range(min(k, len(values))):
        order, proj = order_along(feats, index, vectors[:, r])
        pos = strip_positions(len(order), strip)
        out.append(Direction(r, float(values[r]), float(max(values[r], 0) / total), order, proj,
                             [int(order[p]) for p in pos], [float(proj[p]) for p in pos]))
    return out, spec
