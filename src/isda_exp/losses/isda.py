"""Implicit Semantic Data Augmentation (ISDA) loss (Wang et al., NeurIPS 2019), self-contained.

ISDA minimises the closed-form upper bound (Eq. 4) of the expected cross-entropy over features
translated along class-conditional covariance directions, a~ ~ N(a_i, lambda * Sigma_{y_i}):

    aug_ij = y_ij + (lambda / 2) * (w_j - w_{y_i})^T Sigma_{y_i} (w_j - w_{y_i}),   y = W a + b,

with Sigma_j the biased covariance of every class-j feature seen so far, merged batch by batch with
Chan's parallel formula (Eq. 9-11). Per step: update the statistics with the detached batch, build
the augmented logits with the updated covariances, take the mean cross-entropy. Gradients reach W
through y and the quadratic term, the features through y only; Sigma is a constant.

Cost, versus the straightforward design (N x C x A one-hot masks, an N x A x A gather of per-sample
covariances, an N x C x C product reduced to its diagonal):
- the quadratic term depends on the label only, so it is computed once per class present
  (K <= min(N, C)): P_k = (W - w_k) Sigma_k, q_k = rowsum(P_k * (W - w_k)); since Sigma_k is
  symmetric, d q_kj / d w_j = 2 P_kj, so the backward pass reuses P (no product by Sigma);
- the update touches only the classes present, in place: with the batch-centred features and one
  extra row c_k delta_k (delta = old mean - batch mean) stacked in Z_k, Eq. 10 is the single
  Sigma_k <- n/(n+m) Sigma_k + Z_k^T Z_k / (n+m) (one addmm, no A x A temporary per class);
- classes are processed in blocks of at most `block_bytes` of covariance: one class per block
  works on views (no copies: the CPU default for A >= 256); larger blocks gather, batch the
  matmuls into few kernel launches and scatter back (small A, and CUDA).

Under torch.distributed every rank all-gathers the detached features and labels of the global
batch (N x (A + 1) numbers per rank) and applies the same update, so every rank holds exactly the
statistics one process would compute on the whole global batch (all-reducing per-class scatter
matrices instead would move K x A x A numbers a step: 118 MB at A=640, K=72). The update is thus
a collective: every rank must call it, in training mode, at every step.

Under autocast the statistics and the quadratic term are computed in float32 (float64 when the
module is `.double()`); they are full float32 as long as TF32 matmuls stay off (the default).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import BadValue

COVARIANCES = ("full", "diagonal", "identity", "shared")
# The largest full class-covariance buffer (C x A x A float32) ISDALoss allocates: 4 GiB holds
# every CIFAR model of the paper (DenseNet-BC-190 on CIFAR-100: 1.9 GB) and refuses ImageNet's
# C=1000, A=2048 (16.8 GB), which the paper runs with the diagonal (C x A).
MAX_FULL_COVARIANCE_BYTES = 4 << 30


def isda_ratio(lambda_0: float, epoch: int, epochs: int, constant: bool = False) -> float:
    """lambda for a 0-indexed epoch: lambda_0 * epoch / epochs (plain CE in the first epoch).

    `constant=True` is the Table 5 ablation: lambda_0 from the first epoch on.
    """
    if not math.isfinite(lambda_0) or lambda_0 < 0:
        raise ValueError(f"lambda_0={lambda_0} must be a finite number >= 0 (the paper uses 0.5)")
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch={epoch} must be 0-indexed, in [0, {epochs}) for epochs={epochs}")
    return float(lambda_0) if constant else lambda_0 * epoch / epochs


class _FullQuadratic(torch.autograd.Function):
    """q[k, j] = (w_j - w_c)^T Sigma_c (w_j - w_c) for each present class c = classes[k].

    Forward keeps P_k = (W - w_c) Sigma_c; as Sigma_c is symmetric, dq_kj/dw_j = 2 P_kj and
    dq_kj/dw_c = -2 P_kj: the backward pass costs O(K C A), with no product by Sigma.
    """

    @staticmethod
    def forward(ctx, weight, cov, classes, cls_list, blocks):
        D = weight.unsqueeze(0) - weight[classes].unsqueeze(1)                # [K, C, A]
        P = torch.empty_like(D)
        for lo, hi in blocks:
            if hi - lo == 1:  # a view of the class's covariance, no copy
                torch.mm(D[lo], cov[cls_list[lo]].to(D.dtype), out=P[lo])
            else:
                torch.bmm(D[lo:hi], cov[classes[lo:hi]].to(D.dtype), out=P[lo:hi])
        ctx.save_for_backward(P, classes)
        return torch.einsum("kca,kca->kc", P, D)  # no [K, C, A] temporary

    @staticmethod
    def backward(ctx, grad_q):
        P, classes = ctx.saved_tensors
        grad_q = 2 * grad_q
        grad_w = torch.einsum("kc,kca->ca", grad_q, P)
        grad_w.index_add_(0, classes, torch.einsum("kc,kca->ka", grad_q, P), alpha=-1)
        return grad_w, None, None, None, None


def _blocks(count: int, item_bytes: int, block_bytes: int) -> list[tuple[int, int]]:
    """Consecutive [lo, hi) ranges of `count` items, each at most block_bytes (at least 1 item)."""
    step = max(1, block_bytes // max(1, item_bytes))
    return [(lo, min(lo + step, count)) for lo in range(0, count, step)]


def _autocast_off(device: torch.device):
    """Leave the caller's autocast for the float32 statistics and quadratic term."""
    if device.type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class ISDALoss(nn.Module):
    """ISDA criterion: `loss, logits = criterion(features, fc, targets, ratio)`.

    features [N, A] (the pooled penultimate features, with their graph), fc the `nn.Linear(A, C)`
    classifier, targets [N] class indices, ratio = lambda (see `isda_ratio`: lambda_0 * epoch /
    epochs). Returns the mean cross-entropy of the augmented logits and the plain logits
    fc(features) (measure accuracy on these). In a training loop::

        criterion = ISDALoss(feature_dim=A, num_classes=C)        # covariance="diagonal" at ImageNet size
        for epoch in range(epochs):
            ratio = isda_ratio(0.5, epoch, epochs)
            for x, y in loader:
                loss, logits = criterion(backbone(x), fc, y, ratio)
                optimizer.zero_grad(); loss.backward(); optimizer.step()

    covariance: "full" (per class, C x A x A), "diagonal" (per-class variances, C x A),
    "identity" (Sigma = I; only counts are kept) or "shared" (one covariance of all features).
    Statistics are buffers (`counts`, `means`, `covariances` or `variances`), float32 by default,
    in state_dict() (save them with the model to resume); like BatchNorm's running statistics
    they are updated only in training mode.

    Under torch.distributed the update all-gathers the global batch's detached features and
    labels, so every rank holds the statistics one process would: call the criterion on every
    rank at every training step, and keep it out of the module DDP wraps (DDP broadcasts rank 0's
    buffers at each forward). The `epoch`/`step` keywords of the runner are ignored. block_bytes:
    covariance bytes handled per batched kernel (None: 64 MiB
    on CUDA, 256 KiB elsewhere; 0: one class at a time, on views). process_group: the
    torch.distributed group to gather over (None: the default one).
    """

    def __init__(self, feature_dim: int, num_classes: int, covariance: str = "full", *,
                 block_bytes: int | None = None, process_group=None):
        super().__init__()
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance={covariance!r} is unknown: use one of {COVARIANCES}")
        for name, value in (("feature_dim", feature_dim), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if block_bytes is not None and block_bytes < 0:
            raise ValueError(f"block_bytes={block_bytes} must be >= 0 (or None for the default)")
        if covariance == "full" and num_classes * feature_dim ** 2 * 4 > MAX_FULL_COVARIANCE_BYTES:
            raise BadValue(f"ISDA with full covariances at {num_classes} classes x {feature_dim} "
                           f"features needs {num_classes * feature_dim ** 2 * 4 / 1e9:.1f} GB (limit "
                           f"{MAX_FULL_COVARIANCE_BYTES / 1e9:.1f} GB): use isda=diagonal (the "
                           "paper's ImageNet runs)")
        self.feature_dim, self.num_classes, self.covariance = feature_dim, num_classes, covariance
        self.block_bytes, self.process_group = block_bytes, process_group
        groups = 1 if covariance == "shared" else num_classes
        self.register_buffer("counts", torch.zeros(groups, dtype=torch.int64))
        if covariance != "identity":
            self.register_buffer("means", torch.zeros(groups, feature_dim))
        if covariance in ("full", "shared"):
            self.register_buffer("covariances", torch.zeros(groups, feature_dim, feature_dim))
        if covariance == "diagonal":
            self.register_buffer("variances", torch.zeros(num_classes, feature_dim))

    def extra_repr(self) -> str:
        return (f"feature_dim={self.feature_dim}, num_classes={self.num_classes}, "
                f"covariance={self.covariance!r}")

    # ------------------------------------------------------------------ API

    def forward(self, features: torch.Tensor, fc: nn.Module, targets: torch.Tensor,
                ratio: float, *, epoch: int = 0, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        # epoch/step: the criterion interface shared with isda_exp.losses; ISDA does not use them
        ratio = _check_inputs(self, features, fc, targets, ratio)
        logits = fc(features)
        if self.training:
            self.update_statistics(features, targets)
        try:
            with _autocast_off(features.device):
                augmented = self.augmented_logits(logits, fc.weight, targets, ratio)
                return F.cross_entropy(augmented, targets), logits
        finally:
            self.__dict__.pop("_present", None)  # valid within this call only

    def augmented_logits(self, logits: torch.Tensor, weight: torch.Tensor,
                         targets: torch.Tensor, ratio: float) -> torch.Tensor:
        """Eq. 4's logits with the current statistics: y_ij + ratio/2 * q_{y_i j}."""
        dtype = torch.promote_types(self._stat_dtype(), weight.dtype)
        with _autocast_off(logits.device):
            if ratio == 0:
                return logits.to(dtype)
            present = self.__dict__.pop("_present", None)  # from this step's update, if any
            if present is not None and present[0] is targets:
                classes, cls_list = present[1], present[2]  # the same unique(): two syncs fewer
            else:
                classes = torch.unique(targets)
                cls_list = classes.tolist()
            self._check_classes(cls_list)
            q = self._quadratic(weight.to(dtype), classes, cls_list)         # [K, C]
            rows = torch.searchsorted(classes, targets)
            return logits.to(dtype) + (0.5 * ratio) * q[rows]

    @torch.no_grad()
    def update_statistics(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Merge the batch (gathered over ranks) into counts, means and covariances (Eq. 9-11)."""
        local = targets
        feats, targets = _gather(features.detach(), targets, self._stat_dtype(), self.process_group)
        classes, m = torch.unique(targets, return_counts=True)
        n = self.counts[classes.clamp(0, len(self.counts) - 1)]  # used once the labels are valid
        cls_list, m_list, n_list = torch.stack([classes, m, n]).tolist()  # one device sync
        self._check_classes(cls_list)
        # one process: forward's augmented_logits needs the same classes of the same targets
        self.__dict__["_present"] = (local, classes, cls_list) if targets is local else None
        if self.covariance == "shared":  # one group: every sample counts as class 0
            targets = torch.zeros_like(targets)
            classes, m = targets[:1], m.sum(0, keepdim=True)
            cls_list, m_list, n_list = [0], [len(targets)], n_list[:1]
        self.counts.index_add_(0, classes, m)
        if self.covariance == "identity":
            return
        with _autocast_off(feats.device):
            feats = feats.to(self._stat_dtype())
            self._merge(feats, targets, classes, (cls_list, m_list, n_list))

    # ------------------------------------------------------------ the update

    def _merge(self, feats, targets, classes, lists):
        """Eq. 9-11 for the present classes; the batch covariance is about the batch mean."""
        dtype = feats.dtype
        m = torch.tensor(lists[1], dtype=dtype, device=feats.device)
        n = torch.tensor(lists[2], dtype=dtype, device=feats.device)
        onehot = (classes.unsqueeze(1) == targets.unsqueeze(0)).to(dtype)  # [K, N]
        batch_mean = (onehot @ feats) / m.unsqueeze(1)
        old_mean = self.means[classes].to(dtype)
        delta = old_mean - batch_mean
        new_mean = (n.unsqueeze(1) * old_mean + m.unsqueeze(1) * batch_mean) / (n + m).unsqueeze(1)
        self.means.index_copy_(0, classes, new_mean.to(self.means.dtype))
        centred = feats - batch_mean[torch.searchsorted(classes, targets)]
        if self.covariance == "diagonal":
            scatter = onehot @ centred.square() + (n * m / (n + m)).unsqueeze(1) * delta.square()
            var = self.variances[classes].to(dtype)
            new_var = (n.unsqueeze(1) * var + scatter) / (n + m).unsqueeze(1)
            self.variances.index_copy_(0, classes, new_var.to(self.variances.dtype))
        else:
            rows = torch.sqrt(n * m / (n + m)).unsqueeze(1) * delta
            self._merge_covariances(_stack_rows(centred, targets, rows, lists[1]),
                                    classes, lists)

    def _merge_covariances(self, Z, classes, lists):
        """Sigma_c <- n/(n+m) Sigma_c + Z_c^T Z_c / (n+m), block by block, in place."""
        cls_list, m_list, n_list = lists
        cov, A = self.covariances, self.feature_dim
        starts = [0]
        for m in m_list:
            starts.append(starts[-1] + m + 1)
        for lo, hi in _blocks(len(cls_list), A * A * cov.element_size(), self._block_bytes()):
            if hi - lo == 1:
                n, m, c = n_list[lo], m_list[lo], cls_list[lo]
                z = Z[starts[lo]:starts[lo + 1]]
                work = cov[c] if cov.dtype == Z.dtype else cov[c].to(Z.dtype)
                work.addmm_(z.T, z, beta=n / (n + m), alpha=1.0 / (n + m))
                if work.data_ptr() != cov[c].data_ptr():
                    cov[c].copy_(work)
                continue
            _merge_block(self.covariances, Z, starts, classes[lo:hi], lo, hi, lists)

    # ------------------------------------------------------ the quadratic term

    def _quadratic(self, weight, classes, cls_list):
        """q[k, j] = (w_j - w_c)^T Sigma_c (w_j - w_c), c = classes[k]: [K, C], 0 at j = c."""
        if self.covariance == "full":
            item = self.feature_dim ** 2 * self.covariances.element_size()
            blocks = _blocks(len(cls_list), item, self._block_bytes())
            return _FullQuadratic.apply(weight, self.covariances, classes, cls_list, blocks)
        if self.covariance == "diagonal":
            var, w_c = self.variances[classes].to(weight.dtype), weight[classes]
            q = var @ weight.square().T - 2 * (w_c * var) @ weight.T \
                + (w_c.square() * var).sum(1, keepdim=True)
            return q.masked_fill(classes.unsqueeze(1) == torch.arange(
                self.num_classes, device=classes.device), 0.0)
        if self.covariance == "shared":
            gram = weight @ self.covariances[0].to(weight.dtype) @ weight.T  # [C, C]
        else:
            gram = weight @ weight.T
        diag = gram.diagonal()
        # (diag_j - 2 G_cj) + G_cc is exactly 0 at j = c.
        return (diag.unsqueeze(0) - 2 * gram[classes]) + diag[classes].unsqueeze(1)

    # ------------------------------------------------------------ plumbing

    def _stat_dtype(self) -> torch.dtype:
        """float32, or the buffers' dtype when wider (a .double() module computes in float64)."""
        buf = getattr(self, "means", None)
        return torch.float32 if buf is None else torch.promote_types(buf.dtype, torch.float32)

    def _block_bytes(self) -> int:
        if self.block_bytes is not None:
            return self.block_bytes
        # CPU: copies cost more than per-class calls except for small A. CUDA: batching saves
        # launches; estimated, not tuned on a GPU (copying a 9 MB block costs about 2 launches).
        return 64 << 20 if self.counts.device.type == "cuda" else 256 << 10

    def _check_classes(self, classes: list[int]) -> None:
        """classes: sorted labels present in the batch."""
        if classes and (classes[0] < 0 or classes[-1] >= self.num_classes):
            bad = classes[0] if classes[0] < 0 else classes[-1]
            raise ValueError(f"target {bad} is outside [0, {self.num_classes}): labels must be "
                             f"class indices for num_classes={self.num_classes}")


# ------------------------------------------------------------ helpers of ISDALoss


def _stack_rows(centred, targets, extra, m_list):
    """Z: each class's centred rows followed by its extra row, classes in sorted order."""
    K, N = len(m_list), len(targets)
    order = torch.argsort(targets, stable=True)
    ends = torch.tensor(m_list, device=targets.device).cumsum(0)          # class p: [.., end_p)
    pos = torch.searchsorted(ends, torch.arange(N, device=targets.device), right=True)
    Z = centred.new_empty(N + K, centred.shape[1])
    Z[torch.arange(N, device=targets.device) + pos] = centred[order]
    Z[ends + torch.arange(K, device=targets.device)] = extra
    return Z


def _merge_block(covariances, Z, starts, cls, lo, hi, lists):
    """Several classes at once: zero-padded Z blocks, one baddbmm, one index_copy_."""
    _, m_list, n_list = lists
    dev, rows = Z.device, starts[hi] - starts[lo]
    lens = torch.tensor(m_list[lo:hi], device=dev) + 1
    which = torch.repeat_interleave(torch.arange(hi - lo, device=dev), lens, output_size=rows)
    offset = torch.arange(rows, device=dev) - (lens.cumsum(0) - lens)[which]
    padded = Z.new_zeros(hi - lo, max(m_list[lo:hi]) + 1, Z.shape[1])
    padded[which, offset] = Z[starts[lo]:starts[hi]]
    n = torch.tensor(n_list[lo:hi], dtype=Z.dtype, device=dev).view(-1, 1, 1)
    m = (lens - 1).to(Z.dtype).view(-1, 1, 1)
    work = covariances[cls].to(Z.dtype).mul_(n / (n + m))
    work.baddbmm_(padded.transpose(1, 2) / (n + m), padded)
    covariances.index_copy_(0, cls, work.to(covariances.dtype))


def _gather(feats, targets, dtype, group):
    """The global batch, rank by rank, when torch.distributed runs several processes."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) < 2:
        return feats, targets
    packed = torch.cat([feats.to(dtype), targets.to(dtype).unsqueeze(1)], 1)
    world = dist.get_world_size(group)
    size = torch.tensor([len(packed)], device=packed.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    padded = packed.new_zeros(max(sizes), packed.shape[1])
    padded[:len(packed)] = packed
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    rows = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    return rows[:, :-1], rows[:, -1].round().long()


def _check_inputs(loss, features, fc, targets, ratio) -> float:
    """The criterion's arguments, each with the error that names what was expected."""
    A, C = loss.feature_dim, loss.num_classes
    if not torch.is_tensor(features) or features.dim() != 2 or features.shape[1] != A:
        shape = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
        raise ValueError(f"features must be [N, {A}] (the pooled penultimate features), "
                         f"got {shape}")
    if len(features) == 0:
        raise ValueError("features hold an empty batch: pass at least one sample")
    if not torch.is_tensor(targets) or targets.shape != (len(features),) \
            or targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"targets must be [N]={len(features)} integer class indices, got "
                         f"{getattr(targets, 'shape', type(targets).__name__)}")
    weight = getattr(fc, "weight", None)
    if not torch.is_tensor(weight) or tuple(weight.shape) != (C, A):
        raise ValueError(f"fc must be the nn.Linear({A}, {C}) classifier; its weight is "
                         f"{getattr(weight, 'shape', None)}")
    if features.device != loss.counts.device:
        raise ValueError(f"features are on {features.device} but the ISDA statistics on "
                         f"{loss.counts.device}: move the criterion with .to(device)")
    ratio = float(ratio)
    if not math.isfinite(ratio) or ratio < 0:
        raise ValueError(f"ratio={ratio} must be a finite lambda >= 0 (see isda_ratio)")
    return ratio
