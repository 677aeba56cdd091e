"""Segmentation evaluation: whole-image or sliding-window logits, multi-scale and flip, the confusion
matrix, per-class IoU and mIoU, as the authors' evaluation script computes them.

Sliding window (the authors' predict_sliding): windows of `crop` at stride `stride` (1/3 overlap
for 769/513), the last window of a row or column moved back to end at the image's edge; a window
smaller than the crop (an image smaller than it) is padded with 0 (the normalised mean) at the
bottom and right; each window's main-head logits are upsampled bilinearly (align_corners=True) to
the window and averaged where windows overlap. Multi-scale: the image resized bilinearly
(align_corners=True) by each scale, its logits upsampled back to the image and averaged over the
scales; flip adds the logits of the mirrored image, mirrored back. IoU_c = tp / (pos + res - tp)
(0 for a class neither in the ground truth nor predicted), mIoU = mean over the classes.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..losses.pixel_isda import VOID
from ..parallel import distributed


def _up(logits: torch.Tensor, size) -> torch.Tensor:
    """Logits upsampled bilinearly (align_corners=True), in float32 at least (bf16 under autocast)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


def predict_whole(logits_fn, x: torch.Tensor) -> torch.Tensor:
    """Float logits [n, C, H, W] of the whole image at once."""
    return _up(logits_fn(x), x.shape[-2:])


def windows(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one side: every stride, the last moved back to end at the edge."""
    count = int(math.ceil(max(size - crop, 0) / stride)) + 1
    return sorted({max(min(i * stride + crop, size) - crop, 0) for i in range(count)})


def predict_sliding(logits_fn, x: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Float logits [n, C, H, W] averaged over the sliding windows (see the module docstring)."""
    H, W = x.shape[-2:]
    total = count = None
    for top in windows(H, crop, stride):
        for left in windows(W, crop, stride):
            tile = x[..., top:top + crop, left:left + crop]
            h, w = tile.shape[-2:]
            padded = F.pad(tile, (0, crop - w, 0, crop - h)) if (h, w) != (crop, crop) else tile
            out = _up(logits_fn(padded), (crop, crop))[..., :h, :w]
            if total is None:
                total = out.new_zeros((*out.shape[:2], H, W))
                count = out.new_zeros((1, 1, H, W))
            total[..., top:top + h, left:left + w] += out
            count[..., top:top + h, left:left + w] += 1
    return total / count


def predict(logits_fn, x: torch.Tensor, mode: str = "whole", crop: int | None = None,
            stride: int | None = None, scales=(1.0,), flip: bool = False) -> torch.Tensor:
    """Float logits [n, C, H, W] of normalised images x, over scales (and their mirror images)."""
    H, W = x.shape[-2:]
    total = None
    for scale in scales:
        xs = x if scale == 1 else F.interpolate(x, size=(int(H * scale + 0.5), int(W * scale + 0.5)),
                                                mode="bilinear", align_corners=True)
        views = [xs, xs.flip(-1)] if flip else [xs]
        for v, view in enumerate(views):
            out = predict_sliding(logits_fn, view, crop, stride) if mode == "sliding" \
                else predict_whole(logits_fn, view)
            out = out.flip(-1) if v else out
            out = out if scale == 1 else _up(out, (H, W))
            total = out if total is None else total + out
    return total / len(scales)


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 [C, C]: rows the ground truth, columns the prediction, void pixels left out."""
    keep = target != VOID
    idx = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes).cpu()


def scores(matrix: torch.Tensor | np.ndarray, names) -> dict:
    """mIoU (%), per-class IoU (%) and pixel accuracy (%) of a confusion matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    tp, pos, res = np.diag(m), m.sum(1), m.sum(0)
    iou = tp / np.maximum(1.0, pos + res - tp)
    return {"miou": 100.0 * float(iou.mean()), "iou": {n: 100.0 * float(v) for n, v in zip(names, iou)},
            "pixel_acc": 100.0 * float(tp.sum() / max(1.0, m.sum()))}


@torch.inference_mode()
def evaluate(engine, stream, names, options: dict, multi_scale: bool = False) -> dict:
    """Scores of the evaluation stream (this rank's images, matrices summed over ranks).

    Single scale without flip, and with `multi_scale` also the authors' multi-scale ("_ms") and
    multi-scale + flip ("_msf") figures from the same passes (the scales' logits are kept apart).
    """
    engine.net.eval()
    C = len(names)
    variants = {"": ((1.0,), False)}
    if multi_scale:
        variants.update({"_ms": (options["scales"], False), "_msf": (options["scales"], True)})
    matrices = {k: torch.zeros(C, C, dtype=torch.int64) for k in variants}
    for x, y in stream.images():
        x = engine.normalised(x)
        for key, logits in _variant_logits(engine, x, options, variants).items():
            matrices[key] += confusion(logits.argmax(1), y, C)
    out = {}
    for key, matrix in matrices.items():
        total = torch.tensor(distributed.all_sum(*matrix.flatten().tolist()), dtype=torch.float64)
        s = scores(total.reshape(C, C), names)
        out.update({f"miou{key}": s["miou"], f"iou{key}": s["iou"], f"pixel_acc{key}": s["pixel_acc"]})
    return out


def _variant_logits(engine, x, options, variants) -> dict:
    """Each variant's summed logits; every (scale, flip) pass is computed once and added to the
    variants that hold it (argmax of a sum = argmax of the mean)."""
    wanted = {key: {(float(s), f) for s in scales for f in ((False, True) if flip else (False,))}
              for key, (scales, flip) in variants.items()}
    out: dict = {}
    for scale, f in sorted(set().union(*wanted.values())):
        with engine.autocast():
            logits = predict(engine.net.main_logits, x.flip(-1) if f else x, options["mode"],
                             options["crop"], options["stride"], (scale,))
        logits = logits.flip(-1) if f else logits
        for key, held in wanted.items():
            if (scale, f) in held:
                out[key] = logits if key not in out else out[key] + logits
    return out
