"""Seeded subsets and the class-balanced hold-out of a data set, the same for every data source
(in memory or image folders): functions of the subset seed alone, so run seeds measure training
variance on the same images."""
from __future__ import annotations

import torch

from .. import seeding
from ..errors import UserError


def class_balanced_holdout(labels: torch.Tensor, num_classes: int, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of n / C training images of each class (the paper's lambda_0 hold-out),
    seeded by the subset seed alone: the same hold-out for every run seed."""
    n = int(n)
    if n < 1 or n % num_classes:
        raise UserError(f"dataset.validation={n} must be a positive multiple of the {num_classes} "
                        f"classes (a class-balanced hold-out), e.g. {num_classes * (5000 // num_classes) or num_classes}")
    per_class = n // num_classes
    g = torch.Generator().manual_seed(seeding.subset_seed(seed, seeding.HOLDOUT))
    picked = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        if len(members) <= per_class:
            raise UserError(f"dataset.validation={n} needs {per_class} images of each class and leaves "
                            f"none of class {c} to train on ({len(members)} training images); use a "
                            "smaller dataset.validation")
        picked.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(picked).sort().values


def seeded_subset(count: int, n, seed: int, stream: int, split: str) -> torch.Tensor | None:
    """Sorted indices of a seeded random n of count items (None: all)."""
    if n is None:
        return None
    if not 0 < int(n) <= count:
        raise UserError(f"dataset.{split}_subset={n} is out of range: use 1..{count} or null")
    g = torch.Generator().manual_seed(seeding.subset_seed(seed, stream))
    return torch.randperm(count, generator=g)[: int(n)].sort().values
