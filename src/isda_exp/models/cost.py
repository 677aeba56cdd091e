"""The cost model of a run, the one place that multiplies FLOPs by images.

Training an image costs about three forward passes (forward + backward); the test pass after each
epoch costs one forward pass per test image. A model's forward FLOPs per image are measured on
the zoo (isda_exp.models.flops_per_image); `plan`, the zoo's table and bench_train's estimate of
the paper's tables all count through here.
"""
from __future__ import annotations

TRAIN_PASSES = 3  # forward + backward of one training image, in forward passes
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000  # images of a full-recipe CIFAR run


def run_pflops(forward_flops: int, epochs: int, train_images: int, test_images: int = 0) -> float:
    """PFLOPs of a run whose every epoch trains on `train_images` and tests on `test_images`."""
    return (TRAIN_PASSES * train_images + test_images) * epochs * forward_flops / 1e15


def gpu_hours(pflops: float, tflops: float) -> float:
    """Hours of one GPU sustaining `tflops` TFLOP/s."""
    return pflops * 1e15 / (tflops * 1e12) / 3600


def eval_overhead(train_images: int = CIFAR_TRAIN, test_images: int = CIFAR_TEST) -> float:
    """The factor the test passes add to an epoch's training work."""
    return 1 + test_images / (TRAIN_PASSES * train_images)
