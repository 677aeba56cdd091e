"""Explicit augmented features a~ ~ N(a, lambda Sigma_y): what ISDA's bound stands in for."""
from __future__ import annotations

import torch

from .directions import eigen


class Sampler:
    """Draws per class through a square root of Sigma_c (eigen-decomposition, so a singular
    covariance is fine), computed once per class and kept."""

    def __init__(self, covariances: torch.Tensor, seed: int = 0):
        self.covariances = covariances
        self.generator = torch.Generator().manual_seed(int(seed))
        self._roots: dict[int, torch.Tensor] = {}

    def root(self, c: int) -> torch.Tensor:
        if c not in self._roots:
            values, vectors = eigen(self.covariances[c])
            self._roots[c] = vectors * values.clamp(min=0).sqrt()  # R R^T = Sigma_c
        return self._roots[c]

    def draw(self, feats: torch.Tensor, labels: torch.Tensor, lam: float, n: int) -> torch.Tensor:
        """[N, n, A]: n draws for each feature a_i (float64), around a_i with lam * Sigma_{y_i}."""
        feats = feats.double()
        N, A = feats.shape
        z = torch.randn(N, n, A, generator=self.generator, dtype=torch.float64)
        out = feats.unsqueeze(1).repeat(1, n, 1)
        if lam == 0:
            return out
        scale = float(lam) ** 0.5
        for c in labels.unique().tolist():
            rows = (labels == c).nonzero().flatten()
            out[rows] += scale * (z[rows] @ self.root(c).T)
        return out


def logits(fc: torch.nn.Linear, feats: torch.Tensor) -> torch.Tensor:
    """The run's classifier on float64 features (any leading shape)."""
    return feats @ fc.weight.detach().double().T + fc.bias.detach().double()
