"""Method minus baseline per cell: the difference of mean last-10 errors, its Welch 95% CI and p.

Welch's t (unequal variances) with the Welch-Satterthwaite degrees of freedom, computed from each
arm's mean, sample variance and number of seeds; the t quantiles and p-values come from scipy.
A cell with fewer than 2 seeds in either arm has no variance estimate and says so instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .groups import Row
from .runs import HOLDOUT

LEVEL = 0.95
REFERENCE = "baseline"


@dataclass(frozen=True)
class Welch:
    diff: float  # mean(b) - mean(a)
    low: float
    high: float
    p_value: float
    df: float | None  # None when neither arm varies


def welch(mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int,
          level: float = LEVEL) -> Welch:
    """Welch's two-sided test and CI for mean_b - mean_a from summary statistics (n >= 2 each)."""
    from scipy import stats

    if n_a < 2 or n_b < 2:
        raise ValueError(f"Welch's test needs >= 2 samples per arm, got {n_a} and {n_b}")
    diff = mean_b - mean_a
    sa, sb = var_a / n_a, var_b / n_b
    se = math.sqrt(sa + sb)
    if se == 0.0:  # no spread at all: the difference is exact as far as these seeds go
        return Welch(diff, diff, diff, 1.0 if diff == 0 else 0.0, None)
    df = (sa + sb) ** 2 / (sa ** 2 / (n_a - 1) + sb ** 2 / (n_b - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = 2.0 * float(stats.t.sf(abs(diff) / se, df))
    return Welch(diff, diff - half, diff + half, p, df)


@dataclass(frozen=True)
class Comparison:
    """One method against its cell's reference (baseline) row."""

    method: Row
    reference: Row
    result: Welch | None  # None: fewer than 2 seeds in an arm

    @property
    def note(self) -> str | None:
        if self.result is None:
            return (f"needs >= 2 seeds per arm ({self.method.seeds} vs "
                    f"{self.reference.seeds})")
        return None


def cell_of(row: Row) -> tuple:
    """What must match for two rows to be compared: everything but the method, and the split."""
    return row.key[:-1] + (row.method.endswith(HOLDOUT),)


def reference_label(method: str) -> str:
    """baseline, or the baseline with the same suffix (e.g. isda+dropout vs baseline+dropout)."""
    split = HOLDOUT if method.endswith(HOLDOUT) else ""  # hold-out runs against hold-out runs
    method = method[:len(method) - len(split)]
    suffix = method[method.index("+"):] if "+" in method else ""
    return REFERENCE + suffix + split


def compare(rows: list[Row]) -> list[Comparison]:
    """Every non-baseline row against its cell's baseline (same suffix first), in row order."""
    by_key = {(cell_of(r), r.method): r for r in rows}
    out = []
    for row in rows:
        if row.method.startswith(REFERENCE):
            continue
        ref = by_key.get((cell_of(row), reference_label(row.method))) \
            or by_key.get((cell_of(row), REFERENCE))
        if ref is None:
            continue
        result = None
        if row.seeds >= 2 and ref.seeds >= 2:
            result = welch(ref.error_mean, ref.error_std ** 2, ref.seeds,
                           row.error_mean, row.error_std ** 2, row.seeds)
        out.append(Comparison(row, ref, result))
    return out


def by_method_key(comparisons: list[Comparison]) -> dict:
    """Row key -> its comparison, for the tables' difference column."""
    return {c.method.key: c for c in comparisons}
