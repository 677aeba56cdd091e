"""Segmentation evaluation against independent computations: the confusion matrix and IoU by numpy
loops on random predictions, the sliding window against the whole image where one window covers
it and against a brute-force average of the windows, multi-scale and flip against their definitions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from isda_exp.training.seg_eval import confusion, predict, predict_sliding, predict_whole, scores, windows

VOID = 255


def numpy_scores(pred: np.ndarray, target: np.ndarray, C: int):
    """Per-class IoU by counting pixels class by class (void left out), and their mean."""
    keep = target != VOID
    p, t = pred[keep], target[keep]
    ious = []
    for c in range(C):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        ious.append(inter / union if union else 0.0)
    return 100 * np.mean(ious), [100 * v for v in ious], 100 * np.mean(p == t)


@pytest.mark.parametrize("seed", range(5))
def test_miou_equals_numpy_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    C = int(rng.integers(2, 8))
    target = rng.integers(0, C, size=(3, 17, 23))
    target[rng.random(target.shape) < 0.2] = VOID
    pred = np.where(rng.random(target.shape) < 0.6, np.where(target == VOID, 0, target),
                    rng.integers(0, C, size=target.shape))
    if seed == 0:
        target[target == C - 1] = 0  # a class absent from the ground truth ...
        pred[pred == C - 1] = 1      # ... and from the predictions: IoU 0, as the authors count it
    m = confusion(torch.from_numpy(pred), torch.from_numpy(target), C)
    assert int(m.sum()) == int((target != VOID).sum())
    got = scores(m, [str(c) for c in range(C)])
    miou, ious, acc = numpy_scores(pred, target, C)
    assert got["miou"] == pytest.approx(miou, abs=1e-9)
    assert list(got["iou"].values()) == pytest.approx(ious, abs=1e-9)
    assert got["pixel_acc"] == pytest.approx(acc, abs=1e-9)


def net(C: int = 3):
    """A stand-in network: a fixed conv at stride 2 whose output depends on position (padding)."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, C, 3, stride=2, padding=1).double()


def test_windows_cover_each_side_and_end_at_the_edge():
    assert windows(1024, 769, 513) == [0, 255]
    assert windows(2048, 769, 513) == [0, 513, 1026, 1279]
    assert windows(50, 64, 43) == [0]
    for size in range(1, 200):
        starts = windows(size, 64, 43)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + 64] = True
        assert covered.all() and starts[-1] == max(size - 64, 0)


def test_one_window_covering_the_image_is_the_whole_image():
    fn = net()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(predict_sliding(fn, x, 32, 21), predict_whole(fn, x))
    # an image smaller than the window: padded with 0 at the bottom and right, cropped back
    small = torch.randn(1, 3, 20, 26, dtype=torch.float64)
    padded = F.pad(small, (0, 32 - 26, 0, 32 - 20))
    want = F.interpolate(fn(padded), size=(32, 32), mode="bilinear", align_corners=True)[..., :20, :26]
    torch.testing.assert_close(predict_sliding(fn, small, 32, 21), want)


def test_sliding_windows_average_where_they_overlap():
    """Brute force: every pixel's logits are the mean of the windows holding it."""
    fn = net()
    x = torch.randn(1, 3, 40, 57, dtype=torch.float64)
    crop, stride = 24, 16
    sums = torch.zeros(1, 3, 40, 57, dtype=torch.float64)
    counts = torch.zeros(40, 57, dtype=torch.float64)
    for top in windows(40, crop, stride):
        for left in windows(57, crop, stride):
            out = F.interpolate(fn(x[..., top:top + crop, left:left + crop]), size=(crop, crop),
                                mode="bilinear", align_corners=True)
            sums[..., top:top + crop, left:left + crop] += out
            counts[top:top + crop, left:left + crop] += 1
    assert counts.max() > 1  # windows do overlap
    torch.testing.assert_close(predict_sliding(fn, x, crop, stride), sums / counts)


def test_multi_scale_and_flip_follow_their_definitions():
    fn = net()
    x = torch.randn(1, 3, 30, 40, dtype=torch.float64)
    whole = predict_whole(fn, x)
    torch.testing.assert_close(predict(fn, x, "whole", scales=(1.0,)), whole)
    flipped = predict_whole(fn, x.flip(-1)).flip(-1)
    torch.testing.assert_close(predict(fn, x, "whole", scales=(1.0,), flip=True), whole + flipped)
    x2 = F.interpolate(x, size=(45, 60), mode="bilinear", align_corners=True)
    big = F.interpolate(predict_whole(fn, x2), size=(30, 40), mode="bilinear", align_corners=True)
    torch.testing.assert_close(predict(fn, x, "whole", scales=(1.0, 1.5)), (whole + big) / 2)
