"""A drop-in for the authors' CIFAR `ISDA.py`: code written for their loss switches with one line,

    from isda_exp.compat import ISDALoss        # instead of: from ISDA import ISDALoss
    criterion = ISDALoss(feature_num, class_num).cuda()
    loss, y = criterion(model, fc, x, target, ratio)   # model(x): the features; fc: the classifier

and gets the same loss and outputs (the same estimator, Eq. 9-11, and the same augmented logits,
Eq. 4), computed by isda_exp.losses.ISDALoss: without the authors' N x C x A masks and N x C x C
products, on any device, with its statistics as buffers (state_dict, .to(), checkpoints).
`criterion.estimator` shows them under the authors' names (CoVariance, Ave, Amount).

Several processes (DistributedDataParallel) in your own loop: the statistics need the global
batch, so the loss all-gathers every rank's detached features and labels at each step (every rank
must call it, in training mode) and every rank holds the statistics one process would. Keep the
loss OUT of the DDP-wrapped module: DDP broadcasts a wrapped module's buffers from rank 0 at each
forward (broadcast_buffers=True), a copy of C x A x A numbers per step for nothing (and with
per-rank statistics, as the authors kept them, it would overwrite the other ranks'). Wrap the
feature extractor and the classifier together, pass that as `model` and the plain classifier as
`fc`, so its gradients are averaged with the network's:

    pair = DDP(Pair(net, fc))                  # Pair: forward(x) = net(x)
    loss, y = criterion(pair, fc, x, target, ratio)

Both wrong placements (the loss inside the DDP module, `fc` wrapped on its own) raise a
ValueError saying so (docs/isda_in_your_loop.md).
"""
from __future__ import annotations

import torch
from torch import nn

from .losses.isda import ISDALoss as _ISDALoss

__all__ = ["ISDALoss", "Pair"]


class Pair(nn.Module):
    """The feature extractor and the classifier as one module to wrap in DDP; forward gives the
    features (the loss calls the classifier itself)."""

    def __init__(self, net: nn.Module, fc: nn.Module):
        super().__init__()
        self.net, self.fc = net, fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Estimator:
    """The statistics under the authors' EstimatorCV names (read-only views of the buffers)."""

    def __init__(self, loss: "ISDALoss"):
        self._loss = loss

    @property
    def CoVariance(self) -> torch.Tensor:  # noqa: N802 (the authors' name)
        return self._loss.covariances

    @property
    def Ave(self) -> torch.Tensor:  # noqa: N802
        return self._loss.means

    @property
    def Amount(self) -> torch.Tensor:  # noqa: N802
        return self._loss.counts.to(self._loss.means.dtype)


class ISDALoss(_ISDALoss):
    """ISDA with the authors' call: `loss, y = criterion(model, fc, x, target, ratio)`.

    model(x) returns the features [N, feature_num], fc is the nn.Linear(feature_num, class_num)
    classifier, ratio is lambda (lambda_0 * epoch / epochs in their script; isda_exp.isda_ratio).
    Returns the mean cross-entropy of the augmented logits and the plain logits y = fc(features).
    Full class covariances, as their CIFAR code; `covariance=` takes the variants of
    isda_exp.ISDALoss (diagonal for ImageNet-size models).
    """

    def __init__(self, feature_num: int, class_num: int, covariance: str = "full", **kwargs):
        super().__init__(feature_num, class_num, covariance, **kwargs)
        self.estimator = _Estimator(self)
        self._placement_checked = False

    def forward(self, model: nn.Module, fc: nn.Module, x: torch.Tensor, target: torch.Tensor,
                ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._placement_checked:
            check_placement(self, model, fc)
            self._placement_checked = True
        return super().forward(model(x), fc, target, ratio)


def check_placement(loss: nn.Module, model: nn.Module, fc: nn.Module) -> None:
    """The DDP rule: the loss outside the wrapped module, the classifier not wrapped on its own."""
    ddp = nn.parallel.DistributedDataParallel
    if isinstance(fc, ddp):
        raise ValueError("fc is wrapped in DistributedDataParallel on its own: wrap the feature "
                         "extractor and the classifier together (isda_exp.compat.Pair(net, fc)), "
                         "pass that as model and the plain classifier as fc")
    if isinstance(model, ddp) and any(m is loss for m in model.module.modules()):
        raise ValueError("ISDALoss is inside the DistributedDataParallel module: DDP would "
                         "broadcast rank 0's copy of its statistics to every rank at each forward; "
                         "keep the loss outside (it gathers the global batch itself)")
