"""The competing losses of the paper's Table 3, with one calling convention shared with ISDALoss.

Every criterion is built as `Cls(feature_dim, num_classes, **params)` (configs/loss/, through
`build.build_criterion`) and called by the trainer as

    loss, logits = criterion(features, fc, targets, ratio, epoch=e, step=s)

features [N, A] (the pooled penultimate features, with their graph), fc the `nn.Linear(A, C)`
classifier, targets [N] class indices; `ratio` is ISDA's lambda and is ignored here; epoch and
step are 0-indexed. `logits` is always the plain fc(features), used for the training error.
Losses are computed in at least float32 (autocast's half-precision logits are widened), and in
float64 when the inputs are float64 (gradcheck).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..parallel import distributed
from ..seeding import disturb_seed


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _autocast_off(device: torch.device):
    """Leave the caller's autocast, so that matmuls inside a loss run in the widened dtype."""
    if device.type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")


class Criterion(nn.Module):
    """Base of the non-ISDA losses: subclasses implement `loss(features, fc, logits, targets, ...)`."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        _check_positive_int("feature_dim", feature_dim)
        _check_positive_int("num_classes", num_classes)
        self.feature_dim, self.num_classes = feature_dim, num_classes

    def forward(self, features: torch.Tensor, fc: nn.Module, targets: torch.Tensor,
                ratio: float = 0.0, *, epoch: int = 0, step: int = 0):
        logits = fc(features)
        return self.loss(features, fc, logits, targets, epoch=epoch, step=step), logits

    def loss(self, features, fc, logits, targets, *, epoch: int, step: int) -> torch.Tensor:
        raise NotImplementedError


class CrossEntropy(Criterion):
    """Softmax cross-entropy: the "Basic" rows (loss=ce)."""

    def loss(self, features, fc, logits, targets, *, epoch, step):
        return F.cross_entropy(_wide(logits), targets)


class FocalLoss(Criterion):
    """Focal loss (Lin et al. 2017): -(1 - p_y)^gamma log p_y, averaged; gamma=0 is cross-entropy."""

    def __init__(self, feature_dim: int, num_classes: int, gamma: float = 2.0):
        super().__init__(feature_dim, num_classes)
        if not gamma >= 0:
            raise ValueError(f"gamma={gamma} must be >= 0 (e.g. 2)")
        self.gamma = float(gamma)

    def loss(self, features, fc, logits, targets, *, epoch, step):
        logp_y = F.log_softmax(_wide(logits), 1).gather(1, targets[:, None])[:, 0]
        if self.gamma == 0:
            return -logp_y.mean()
        one_minus_p = -torch.expm1(logp_y)  # 1 - p_y without cancellation
        if self.gamma < 1:  # d/dp (1-p)^gamma is infinite at p = 1
            one_minus_p = one_minus_p.clamp_min(torch.finfo(one_minus_p.dtype).eps)
        return -(one_minus_p.pow(self.gamma) * logp_y).mean()


class GeneralizedCrossEntropy(Criterion):
    """L_q loss (Zhang & Sabuncu 2018): (1 - p_y^q) / q, averaged; cross-entropy as q -> 0."""

    def __init__(self, feature_dim: int, num_classes: int, q: float = 0.7):
        super().__init__(feature_dim, num_classes)
        if not 0 < q <= 1:
            raise ValueError(f"q={q} must be in (0, 1] (e.g. 0.7)")
        self.q = float(q)

    def loss(self, features, fc, logits, targets, *, epoch, step):
        logp_y = F.log_softmax(_wide(logits), 1).gather(1, targets[:, None])[:, 0]
        return (-torch.expm1(self.q * logp_y) / self.q).mean()  # (1 - exp(q log p)) / q


def chebyshev_cos(c: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m theta) from c = cos(theta): the Chebyshev polynomial T_m(c), smooth in c."""
    prev, cur = torch.ones_like(c), c
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2 * c * cur - prev
    return cur


def psi(cos_theta: torch.Tensor, margin: int) -> torch.Tensor:
    """L-Softmax's psi(theta) = (-1)^k cos(m theta) - 2k on [k pi/m, (k+1) pi/m], from cos(theta).

    k is piecewise constant (no gradient); cos(m theta) is a polynomial of cos(theta), so the
    gradient needs no arccos.
    """
    c = cos_theta.clamp(-1.0, 1.0)
    with torch.no_grad():
        k = torch.floor(torch.acos(c) * margin / math.pi).clamp(0, margin - 1)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * chebyshev_cos(c, margin) - 2.0 * k


class LargeMarginSoftmax(Criterion):
    """L-Softmax (Liu et al. 2016) with the authors' annealing of the margin.

    The target logit |w_y||x| cos(theta) becomes (beta |w_y||x| cos + |w_y||x| psi(theta)) /
    (1 + beta) with beta_t = max(beta_min, beta * scale^t), t the training step counted by the
    `iteration` buffer (in state_dict, so resuming continues the schedule). The classifier's bias,
    absent from the paper's formulation, is added to every logit, so margin=1 is exactly softmax
    cross-entropy on fc(features).
    """

    def __init__(self, feature_dim: int, num_classes: int, margin: int = 4, beta: float = 100.0,
                 beta_min: float = 0.0, scale: float = 0.99):
        super().__init__(feature_dim, num_classes)
        _check_positive_int("margin", margin)
        if not (beta >= 0 and 0 <= beta_min and 0 < scale <= 1):
            raise ValueError(f"need beta >= 0, beta_min >= 0, 0 < scale <= 1; got beta={beta}, "
                             f"beta_min={beta_min}, scale={scale}")
        self.margin, self.beta, self.beta_min, self.scale = margin, float(beta), float(beta_min), float(scale)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"margin={self.margin}, beta={self.beta}, beta_min={self.beta_min}, scale={self.scale}"

    def current_beta(self) -> float:
        return max(self.beta_min, self.beta * self.scale ** int(self.iteration))

    def margin_logits(self, features: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor,
                      beta: float) -> torch.Tensor:
        """The logits of the loss: w_j.x (+ b_j), the target column replaced by the margin term."""
        x, w = _wide(features), _wide(weight)
        with _autocast_off(x.device):
            dots = x @ w.t()                                                   # [N, C]
        dot_y = dots.gather(1, targets[:, None])[:, 0]
        norms = torch.linalg.vector_norm(x, dim=1) * torch.linalg.vector_norm(w, dim=1)[targets]
        cos = dot_y / norms.clamp_min(torch.finfo(norms.dtype).tiny)
        target = (beta * dot_y + norms * psi(cos, self.margin)) / (1.0 + beta)
        out = dots.scatter(1, targets[:, None], target[:, None])
        return out if bias is None else out + _wide(bias)

    def loss(self, features, fc, logits, targets, *, epoch, step):
        out = self.margin_logits(features, fc.weight, fc.bias, targets, self.current_beta())
        if self.training:
            self.iteration += 1
        return F.cross_entropy(out, targets)


class CenterLoss(Criterion):
    """Softmax cross-entropy + lambda_c/2 * mean_i ||x_i - c_{y_i}||^2 (Wen et al. 2016).

    The centres are a buffer (in state_dict, checkpointed), not parameters: SGD does not touch
    them. After the loss is computed with the current centres, each class j present in the
    batch moves by Wen et al.'s rule c_j -= alpha * sum_{i: y_i=j} (c_j - x_i) / (1 + n_j),
    with the detached features, in training mode only. The centres start at zero. Under DDP
    n_j and the sums are over the global batch (one all-reduce), so every rank keeps the same
    centres as one process.
    """

    def __init__(self, feature_dim: int, num_classes: int, lambda_c: float = 0.003, alpha: float = 0.5):
        super().__init__(feature_dim, num_classes)
        if not (lambda_c >= 0 and 0 <= alpha <= 1):
            raise ValueError(f"need lambda_c >= 0 and 0 <= alpha <= 1; got lambda_c={lambda_c}, alpha={alpha}")
        self.lambda_c, self.alpha = float(lambda_c), float(alpha)
        self.register_buffer("centers", torch.zeros(num_classes, feature_dim))

    def extra_repr(self) -> str:
        return f"lambda_c={self.lambda_c}, alpha={self.alpha}"

    def loss(self, features, fc, logits, targets, *, epoch, step):
        x = _wide(features)
        c = self.centers[targets].to(x.dtype)  # a copy: the update below does not touch it
        center_term = 0.5 * ((x - c) ** 2).sum(1).mean()
        if self.training:
            self.update_centers(features.detach(), targets)
        return F.cross_entropy(_wide(logits), targets) + self.lambda_c * center_term

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        x = features.to(self.centers.dtype)
        counts = torch.bincount(targets, minlength=self.num_classes).to(x.dtype)     # n_j
        sums = torch.zeros_like(self.centers).index_add_(0, targets, x)             # sum of x_i
        if distributed.world() > 1:  # the global batch's counts and sums
            both = torch.cat([counts[:, None], sums], 1)
            dist.all_reduce(both)
            counts, sums = both[:, 0], both[:, 1:]
        delta = (counts[:, None] * self.centers - sums) / (1.0 + counts[:, None])   # 0 if absent
        self.centers -= self.alpha * delta


class DisturbLabel(Criterion):
    """DisturbLabel (Xie et al. 2016): cross-entropy on labels disturbed per step.

    Each label is, with probability alpha, replaced by a class drawn uniformly from all C, so
    the new label is the true class with probability 1 - (C-1)/C * alpha and each other class
    with alpha/C (the paper's distribution). The draw is a function of (seed, epoch, step)
    only, so a resumed run disturbs the same labels; only training mode disturbs. Under DDP the
    noise is drawn for the global batch and each rank takes its contiguous part (the trainer's
    equal shares), so label i of a step is disturbed alike whatever the number of ranks.
    """

    def __init__(self, feature_dim: int, num_classes: int, alpha: float = 0.1, seed: int = 0):
        super().__init__(feature_dim, num_classes)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha={alpha} must be in [0, 1] (e.g. 0.1)")
        self.alpha, self.seed = float(alpha), int(seed)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, seed={self.seed}"

    def disturb(self, targets: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """The disturbed labels of step `step` of epoch `epoch` (drawn on the CPU, then moved)."""
        g = torch.Generator().manual_seed(disturb_seed(self.seed, epoch, step))
        rank, world = distributed.rank(), distributed.world()
        n = len(targets)
        replace = torch.rand(n * world, generator=g)[rank * n:(rank + 1) * n] < self.alpha
        drawn = torch.randint(self.num_classes, (n * world,), generator=g)[rank * n:(rank + 1) * n]
        return torch.where(replace.to(targets.device), drawn.to(targets.device), targets)

    def loss(self, features, fc, logits, targets, *, epoch, step):
        if self.training:
            targets = self.disturb(targets, epoch, step)
        return F.cross_entropy(_wide(logits), targets)


# The loss group's choices: the `_target_` of each configs/loss/<name>.yaml -> <name>.
LOSS_NAMES = {
    "isda_exp.losses.CrossEntropy": "ce",
    "isda_exp.losses.FocalLoss": "focal",
    "isda_exp.losses.LargeMarginSoftmax": "lsoftmax",
    "isda_exp.losses.CenterLoss": "center",
    "isda_exp.losses.GeneralizedCrossEntropy": "lq",
    "isda_exp.losses.DisturbLabel": "disturblabel",
}
PLAIN_CE = "isda_exp.losses.CrossEntropy"


def loss_name(target: str) -> str:
    """The loss config's name (ce, focal, ...) from its `_target_`; the target itself if unknown."""
    return LOSS_NAMES.get(str(target), str(target))
