"""What to show, checked against the run before any work (bad input: one UserError line)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import UserError

PAPER_LAMBDA_0 = 0.5  # the reference lambda for a run trained without ISDA


@dataclass
class Options:
    classes: list[str] | None = None      # indices or names (CIFAR-10's, a folder's); None: 3 spread classes
    images: list[int] | None = None       # test-set indices; None: the first of each class
    lambdas: list[float] = field(default_factory=lambda: [0, 0.5, 1, 2, 4, 8, 16])  # x lambda_0
    show_lambdas: list[float] = field(default_factory=lambda: [1, 4])               # x lambda_0
    directions: int = 3
    strip: int = 10
    draws: int = 6
    mc_draws: int = 64
    keep_images: int = 2000
    bound_images: int = 500
    covariance: str = "auto"
    device: str = "auto"
    batch_size: int = 256
    seed: int = 0
    overrides: list[str] = field(default_factory=list)

    def check(self) -> None:
        for name in ("directions", "strip", "draws", "mc_draws", "keep_images", "bound_images",
                     "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"--{name.replace('_', '-')} {value} must be a positive integer")
        for name in ("lambdas", "show_lambdas"):
            values = getattr(self, name)
            if not values or any(not math.isfinite(v) or v < 0 for v in values):
                raise UserError(f"--{name.replace('_', '-')} {values} must be finite multiples of "
                                "lambda_0 >= 0, comma-separated, e.g. 0,1,2,4")


def resolve_classes(requested: list[str] | None, names: list[str]) -> list[int]:
    """Class indices from indices or names; a class that does not exist is a UserError."""
    count = len(names)
    if not requested:
        return sorted({round(i * (count - 1) / 2) for i in range(min(3, count))})
    out = []
    for item in requested:
        text = str(item).strip()
        if text.lstrip("-").isdigit() and 0 <= int(text) < count:
            out.append(int(text))
        elif text in names:
            out.append(names.index(text))
        else:
            named = not names[0].startswith("class ")
            known = f"0-{count - 1}" + (f" or a name ({', '.join(names)})" if named else "")
            raise UserError(f"class {text!r} does not exist in this run's data set "
                            f"({count} classes): use {known}")
    return list(dict.fromkeys(out))


def resolve_images(requested: list[int] | None, test_labels, classes: list[int]) -> list[int]:
    n = len(test_labels)
    if requested:
        bad = [i for i in requested if not 0 <= i < n]
        if bad:
            raise UserError(f"--images {bad[0]} is not a test-set index: this run's evaluation set "
                            f"has {n} images (0-{n - 1})")
        return list(dict.fromkeys(requested))
    firsts = [(test_labels == c).nonzero().flatten() for c in classes]
    return [int(f[0]) for f in firsts if len(f)]
