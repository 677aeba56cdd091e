"""The class covariances Sigma_c that ISDA augments with, as full [C, A, A] float64 matrices.

From the checkpoint for an ISDA run (what training used: the running estimate over every step of
training, on augmented training images in train mode), or estimated from the cached training
features of the final model with ISDA's own estimator (ISDALoss.update_statistics, Eq. 9-11) fed
batch by batch; the latter is also what a run without ISDA gets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..losses import ISDALoss

SOURCES = ("auto", "checkpoint", "features")


@dataclass
class Covariances:
    matrices: torch.Tensor  # [C, A, A] float64
    counts: list[int]       # features behind each class's estimate (the checkpoint's, or ours)
    source: str             # e.g. "checkpoint (full)" or "training features (final model)"


def from_checkpoint(criterion: ISDALoss) -> Covariances:
    """The ISDA state as full matrices: diagonal -> diag(variances), shared -> the one matrix for
    every class, identity -> I (ISDA keeps only counts then)."""
    C, A, kind = criterion.num_classes, criterion.feature_dim, criterion.covariance
    counts = criterion.counts.tolist()
    if kind == "full":
        mats = criterion.covariances.double().clone()
    elif kind == "diagonal":
        mats = torch.diag_embed(criterion.variances.double())
    elif kind == "shared":
        mats = criterion.covariances[0].double().expand(C, A, A).clone()
        counts = counts * C
    else:
        mats = torch.eye(A, dtype=torch.float64).expand(C, A, A).clone()
    if kind != "identity" and sum(counts) == 0:
        raise UserError("the checkpoint's ISDA statistics are empty (no training step yet); "
                        "use --covariance features")
    return Covariances(mats, counts, f"checkpoint ({kind})")


def estimate(feats: np.ndarray, labels: torch.Tensor, num_classes: int,
             batch_size: int = 4096) -> Covariances:
    """ISDA's estimator (biased, per class) over the features, fed in batches, in float64."""
    est = ISDALoss(feats.shape[1], num_classes, "full").double()
    for i in range(0, len(labels), batch_size):
        chunk = torch.from_numpy(np.array(feats[i:i + batch_size], dtype=np.float64))
        est.update_statistics(chunk, labels[i:i + batch_size])
    return Covariances(est.covariances.clone(), est.counts.tolist(),
                       "training features (final model, eval mode)")


def choose(source: str, criterion, feats: np.ndarray, labels: torch.Tensor,
           num_classes: int) -> Covariances:
    """auto: the checkpoint's for ISDA with full/diagonal/shared covariances; the features' for a
    run without ISDA and for isda=identity (whose Sigma = I has no preferred direction)."""
    if source not in SOURCES:
        raise UserError(f"--covariance {source} is unknown: use one of {', '.join(SOURCES)}")
    is_isda = isinstance(criterion, ISDALoss)
    if source == "checkpoint" and not is_isda:
        raise UserError("--covariance checkpoint needs an ISDA run; this run trained without ISDA "
                        "(its checkpoint holds no covariance): use --covariance features or auto")
    if source == "checkpoint" or (source == "auto" and is_isda and criterion.covariance != "identity"):
        return from_checkpoint(criterion)
    return estimate(feats, labels, num_classes)


def agreement(a: torch.Tensor, b: torch.Tensor, k: int = 3) -> dict:
    """How alike two estimates of one class covariance are: their traces, |cos| between their
    top eigenvectors, and the overlap of their top-k subspaces (mean squared cosine, 1 = same)."""
    from .directions import eigen

    va, vb = eigen(a)[1][:, :k], eigen(b)[1][:, :k]
    return {"trace": float(a.trace()), "trace_other": float(b.trace()),
            "top_cosine": float((va[:, 0] @ vb[:, 0]).abs()),
            f"top{k}_overlap": float((va.T @ vb).square().sum() / k)}
