"""The losses a run trains with: ISDA (isda.py) and the losses it is compared with in Table 3
(competing.py), and ISDA on every pixel of a segmentation head (pixel_isda.py). Every criterion is called as `loss, logits = criterion(features, fc, targets,
ratio, epoch=e, step=s)`; `ISDALoss` is self-contained and can be used in any training loop."""
from .competing import (
                        LOSS_NAMES,
                        PLAIN_CE,
                        CenterLoss,
                        Criterion,
                        CrossEntropy,
                        DisturbLabel,
                        FocalLoss,
                        GeneralizedCrossEntropy,
                        LargeMarginSoftmax,
                        loss_name,
)
from .isda import COVARIANCES, MAX_FULL_COVARIANCE_BYTES, ISDALoss, isda_ratio
from .pixel_isda import STATISTICS, VOID, PixelISDA, SegmentationLoss

__all__ = ["ISDALoss", "isda_ratio", "COVARIANCES", "MAX_FULL_COVARIANCE_BYTES", "Criterion",
           "CrossEntropy", "FocalLoss", "GeneralizedCrossEntropy", "LargeMarginSoftmax",
           "CenterLoss", "DisturbLabel", "LOSS_NAMES", "PLAIN_CE", "loss_name", "PixelISDA",
           "SegmentationLoss", "STATISTICS", "VOID"]
