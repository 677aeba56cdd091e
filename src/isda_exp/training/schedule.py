"""Learning-rate schedules of the authors' recipes, as a factor of the base LR per 0-indexed epoch."""
from __future__ import annotations

import math


def scaled_milestones(milestones, recipe_epochs: int, epochs: int) -> list[int]:
    """Milestones of a recipe moved proportionally when a run is shorter or longer than the recipe.

    A milestone never lands on the first epoch, so even a 2-epoch run starts at the base LR.
    """
    if epochs == recipe_epochs:
        return [int(m) for m in milestones]
    return [max(2, round(m * epochs / recipe_epochs)) for m in milestones]


def lr_factor(epoch: int, epochs: int, schedule: str, milestones=(), gamma: float = 0.1) -> float:
    """Factor of lr0 in (0-indexed) `epoch`.

    step: the reference script decays one epoch early, so "x0.1 at 80" applies from the 80th epoch
    counted from 1 (index 79). cosine: 0.5 * (1 + cos(pi * (epoch + 1) / epochs)) (the CIFAR
    script). cosine_imagenet: 0.5 * (1 + cos(pi * epoch / epochs)) (the ImageNet script: the first
    epoch at lr0, the last above 0).
    """
    if schedule == "step":
        return gamma ** sum(epoch + 1 >= m for m in milestones)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (epoch + 1) / epochs))
    if schedule == "cosine_imagenet":
        return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    raise ValueError(f"unknown schedule {schedule!r}: use step, cosine or cosine_imagenet in the "
                     "model's recipe")
