"""ISDA on every pixel of a segmentation head's feature map, and the segmentation loss built on it.

The authors' Cityscapes code applies ISDA to each head's penultimate feature map (stride 8): the
labels are nearest-downsampled to the feature map, every non-void pixel is one ISDA sample of its
class (void pixels neither enter the statistics nor are augmented), the augmented logits are
upsampled bilinearly (align_corners=True) to the crop and trained with cross-entropy ignoring
void; loss = main + 0.4 x auxiliary.

`PixelISDA` does this with the project's `ISDALoss` (its statistics, Chan's update and the
quadratic term computed once per class present): the valid pixels are flattened to [P, A] rows,
the statistics are merged from them, and the augmented logits differ from the plain ones by
(lambda / 2) q[y_p] with q [K, C] (K classes present). The authors' formulation builds N x C x A
tensors over pixels (at 2 x 97 x 97 pixels, 20 buckets and A = 512: 0.75 GB each); nothing here is
larger than [P, A] (the features themselves) or [P, C] (the logits).

Statistics: over the global batch under torch.distributed (every rank gathers the valid pixels'
features, as ISDALoss does for classification), or, with statistics="per_rank", each rank's own
pixels only: the authors' per-GPU estimators, named as such.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .isda import ISDALoss

VOID = 255  # the label of pixels that are not trained on (data sources map their ignore value here)
STATISTICS = ("global", "per_rank")
_SINGLETON_GROUPS: dict[int, object] = {}  # world size -> this rank's one-rank process group


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, H, W] labels -> [N, h, w] by nearest neighbour, as the authors' F.interpolate(nearest)."""
    small = F.interpolate(labels.unsqueeze(1).float(), size=size, mode="nearest")
    return small.squeeze(1).long()


def _own_group():
    """A process group holding this rank alone (created once, by every rank, in the same order)."""
    world = dist.get_world_size()
    if world not in _SINGLETON_GROUPS:
        groups = [dist.new_group([r]) for r in range(world)]
        _SINGLETON_GROUPS[world] = groups[dist.get_rank()]
    return _SINGLETON_GROUPS[world]


class PixelISDA(nn.Module):
    """`augmented, logits = pixel_isda(features, classifier, labels, ratio)` for one head.

    features [N, A, h, w] (the head's penultimate map, with its graph), classifier the head's final
    1x1 nn.Conv2d(A, C), labels [N, H, W] at crop resolution (VOID = 255 not trained on), ratio =
    lambda. Returns the augmented logits [N, C, h, w] (plain at void pixels) and the plain ones.
    covariance: ISDALoss's (diagonal: the authors'; full where C x A x A fits).
    """

    def __init__(self, feature_dim: int, num_classes: int, covariance: str = "diagonal",
                 statistics: str = "global", block_bytes: int | None = None):
        super().__init__()
        if statistics not in STATISTICS:
            raise ValueError(f"statistics={statistics!r} is unknown: use global (over the global "
                             "batch) or per_rank (each rank its own pixels, as the authors ran)")
        if num_classes >= VOID:
            raise ValueError(f"num_classes={num_classes} must be below {VOID} (the void label)")
        self.statistics = statistics
        self.isda = ISDALoss(feature_dim, num_classes, covariance, block_bytes=block_bytes)

    def extra_repr(self) -> str:
        return f"statistics={self.statistics!r}"

    def forward(self, features: torch.Tensor, classifier: nn.Module, labels: torch.Tensor,
                ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        N, A, h, w = features.shape
        logits = classifier(features)
        C = logits.shape[1]
        targets = downsample_labels(labels, (h, w)).reshape(-1)
        rows = (targets != VOID).nonzero().squeeze(1)
        valid = targets[rows]
        if self.training:
            self._update(features.detach().permute(0, 2, 3, 1).reshape(-1, A)[rows], valid)
        try:
            flat = logits.permute(0, 2, 3, 1).reshape(-1, C)
            weight = classifier.weight.reshape(C, A)
            augmented = self.isda.augmented_logits(flat[rows], weight, valid, float(ratio))
            out = flat.to(augmented.dtype).index_put((rows,), augmented)
        finally:
            self.isda.__dict__.pop("_present", None)  # valid within this call only
        return out.reshape(N, h, w, C).permute(0, 3, 1, 2), logits

    def _update(self, feats: torch.Tensor, targets: torch.Tensor) -> None:
        """Merge the valid pixels (gathered over ranks unless statistics="per_rank")."""
        several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.isda.process_group = _own_group() if several and self.statistics == "per_rank" else None
        self.isda.update_statistics(feats, targets)


class SegmentationLoss(nn.Module):
    """The authors' training loss over the heads: sum_h weight_h x CE(upsampled logits_h, labels).

    `loss, main_logits = criterion(features, classifiers, labels, ratio, valid_pixels)`: features
    and classifiers one per head (main first), labels [N, H, W] at crop size. Each head's logits,
    ISDA-augmented when `isda` holds its PixelISDA (None: plain cross-entropy), are upsampled
    bilinearly with align_corners=True to the crop. The cross-entropy is summed over the
    non-void pixels and divided by `valid_pixels`, this rank's share of the global batch's
    non-void pixel count (global count / ranks): DDP's mean of the ranks' gradients is then the
    gradient of the one-process mean over the global batch. Default: this batch's own count.
    """

    def __init__(self, weights=(1.0, 0.4), isda: list[PixelISDA] | None = None):
        super().__init__()
        self.weights = tuple(float(w) for w in weights)
        self.isda = nn.ModuleList(isda) if isda else None
        if self.isda is not None and len(self.isda) != len(self.weights):
            raise ValueError(f"{len(self.isda)} ISDA estimators for {len(self.weights)} heads")

    def forward(self, features, classifiers, labels: torch.Tensor, ratio: float,
                valid_pixels: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if valid_pixels is None:
            valid_pixels = float((labels != VOID).sum())
        size = labels.shape[-2:]
        total, main = 0.0, None
        for h, (feats, classifier, weight) in enumerate(zip(features, classifiers, self.weights)):
            if self.isda is not None:
                logits, plain = self.isda[h](feats, classifier, labels, ratio)
            else:
                logits = plain = classifier(feats)
            up = F.interpolate(logits.to(torch.promote_types(logits.dtype, torch.float32)), size=size,
                               mode="bilinear", align_corners=True)
            ce = F.cross_entropy(up, labels.long(), ignore_index=VOID, reduction="sum")
            total = total + weight * ce / max(valid_pixels, 1.0)
            main = plain if main is None else main
        return total, main
