"""The step engine of a segmentation run: inputs (uint8 -> normalised, the crop's padding set to 0),
autocast, the forward pass of both heads, the loss (isda_exp.losses.SegmentationLoss with per-pixel
ISDA) and one SGD step; the loop (seg_trainer) decides when, seg_eval evaluates with `net`.

Under DDP the cross-entropy is normalised by the global batch's non-void pixel count (one small
collective a step), so the ranks' averaged gradients are the one-process gradient of the mean.
"""
from __future__ import annotations

import torch

from ..data.normalize import normalize
from ..data.segmentation.transforms import zero_outside
from ..losses.pixel_isda import VOID
from ..parallel import distributed
from .engine import PRECISIONS, Engine


class SegEngine:
    """Network (with its classifiers), loss, optimizer, precision and memory format of a run."""

    def __init__(self, net, criterion, optimizer, device: torch.device, precision: str = "fp32",
                 norm: tuple | None = None, channels_last: bool = False):
        self.net, self.criterion, self.optimizer, self.device, self.norm = net, criterion, optimizer, device, norm
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.ddp = distributed.wrap(self.net, device)  # None: one process
        self.trained = self.net if self.ddp is None else self.ddp
        self.amp_dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    autocast = Engine.autocast  # the run's mixed-precision context (a no-op in fp32)

    def normalised(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images -> normalised float, 0 outside each image's box (the crop's padding)."""
        x = normalize(x, self.norm)
        if boxes is not None:
            zero_outside(x, boxes)
        return x.contiguous(memory_format=self.memory_format)

    def valid_pixels(self, y: torch.Tensor) -> float:
        """This rank's share of the global batch's non-void pixels (global count / ranks)."""
        local = (y != VOID).sum()
        if self.ddp is None:
            return float(local)
        return distributed.all_sum(local)[0] / distributed.world()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, boxes: torch.Tensor, ratio: float) -> torch.Tensor:
        """One SGD step on a batch of uint8 crops at ISDA strength `ratio`; the detached loss."""
        valid = self.valid_pixels(y)
        with self.autocast():
            features = self.trained(self.normalised(x, boxes))
            loss, _ = self.criterion(features, self.net.classifiers, y, ratio, valid)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def weights_finite(self) -> bool:
        return bool(torch.stack([p.detach().isfinite().all() for p in self.net.parameters()]).all().item())
