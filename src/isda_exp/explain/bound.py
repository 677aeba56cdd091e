"""How tight ISDA's surrogate is: the expected cross-entropy over explicit augmented features
(Monte Carlo, M draws per feature, Eq. 2) against the closed-form upper bound of Eq. 4, which is
computed by the project's own ISDALoss.augmented_logits (the loss the run trained on)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import ISDALoss
from .sampling import Sampler, logits


def mc_expected_ce(sampler: Sampler, fc, feats: torch.Tensor, labels: torch.Tensor, lam: float,
                   draws: int, chunk: int = 256) -> tuple[float, float]:
    """(mean over the features of the M-draw mean CE, its Monte Carlo standard error)."""
    total, var_sum = 0.0, 0.0
    for lo in range(0, len(labels), chunk):
        y = labels[lo:lo + chunk]
        z = logits(fc, sampler.draw(feats[lo:lo + chunk], y, lam, draws))      # [n, M, C]
        ce = torch.logsumexp(z, 2) - z.gather(2, y.view(-1, 1, 1).expand(-1, draws, 1)).squeeze(2)
        total += float(ce.mean(1).sum())
        if draws > 1:
            var_sum += float(ce.var(1).sum()) / draws
    n = len(labels)
    return total / n, (var_sum ** 0.5) / n


def isda_bound(fc, covariances: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
               lam: float) -> float:
    """Eq. 4: the mean CE of y_ij + lam/2 (w_j - w_y)^T Sigma_y (w_j - w_y), via ISDALoss."""
    C, A = covariances.shape[0], covariances.shape[1]
    surrogate = ISDALoss(A, C, "full").double().eval()
    surrogate.covariances.copy_(covariances)
    weight = fc.weight.detach().double()
    with torch.no_grad():
        z = surrogate.augmented_logits(logits(fc, feats), weight, labels, lam)
        return float(F.cross_entropy(z, labels))


def bound_curve(sampler: Sampler, fc, feats: torch.Tensor, labels: torch.Tensor,
                lambdas: list[float], draws: int) -> list[dict]:
    """Per lambda: MC estimate +- standard error, the bound, and the gap between them."""
    out = []
    for lam in lambdas:
        mc, se = mc_expected_ce(sampler, fc, feats, labels, lam, draws)
        bound = isda_bound(fc, sampler.covariances, feats, labels, lam)
        out.append({"lambda": lam, "mc_expected_ce": mc, "mc_standard_error": se,
                    "bound_eq4": bound, "gap": bound - mc, "draws": draws, "features": len(labels)})
    return out
