"""Grouping finished runs into cells: mean and sample std of the last-10 error across seeds."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from isda_exp import paper

from .runs import Key, Run, _num

DATASET_ORDER = ("cifar10", "cifar100", "synthetic")
AUG_ORDER = ("baseline", "cutout", "autoaugment")


@dataclass
class Row:
    """One group of finished runs: mean and sample std of test_error_last10 across seeds."""

    dataset: str
    model: str
    aug: str
    method: str  # label: baseline, isda, isda-<variant>
    seeds: int
    error_mean: float
    error_std: float | None  # None with a single seed
    paper_mean: float | None
    paper_std: float | None
    smoke: bool
    epochs: tuple[int, ...] = ()
    runs: tuple[Path, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def key(self) -> Key:
        return (self.dataset, self.model, self.aug, self.method)

    @property
    def diff(self) -> float | None:
        return None if self.paper_mean is None else self.error_mean - self.paper_mean


def aggregate(runs: Iterable[Run]) -> list[Row]:
    """Group finished runs by (dataset, model, aug, method/variant), in the paper's order."""
    groups: dict[Key, list[Run]] = defaultdict(list)
    for run in runs:
        if run.status == "finished" and run.key is not None:
            groups[run.key].append(run)
    return sorted((_row(key, members) for key, members in groups.items()),
                  key=lambda r: _order(r.key))


def _row(key: Key, members: list[Run]) -> Row:
    errors = [float(r.summary["test_error_last10"]) for r in members]
    n = len(errors)
    mean = math.fsum(errors) / n
    std = math.sqrt(math.fsum((e - mean) ** 2 for e in errors) / (n - 1)) if n > 1 else None
    published = paper.paper_number(*key)
    epochs = tuple(sorted({int(r.summary["epochs"]) for r in members
                           if _num(r.summary.get("epochs")) is not None}))
    return Row(*key, seeds=n, error_mean=mean, error_std=std,
               paper_mean=published[0] if published else None,
               paper_std=published[1] if published else None,
               smoke=any(r.smoke for r in members), epochs=epochs,
               runs=tuple(r.path for r in members), notes=_group_notes(key, members))


def _group_notes(key: Key, members: list[Run]) -> tuple[str, ...]:
    """Warnings for groups that average things that should not be averaged together."""
    notes = []
    seeds = [r.summary.get("seed") for r in members]
    dupes = sorted({str(s) for s in seeds if seeds.count(s) > 1})
    if dupes:
        notes.append(f"{'/'.join(key)}: seed(s) {', '.join(dupes)} appear in several runs")
    for name in ("epochs", "train_size", "lambda_0"):
        values = {repr(r.summary.get(name)) for r in members}
        if len(values) > 1:
            notes.append(f"{'/'.join(key)}: runs differ in {name} ({', '.join(sorted(values))})")
    return tuple(notes)


def _order(key: Key) -> tuple:
    dataset, model, aug, method = key
    models = tuple(paper.MODEL_NAMES)
    return (_rank(dataset, DATASET_ORDER), dataset, _rank(model, models), model,
            _rank(aug, AUG_ORDER), aug, _rank(method, paper.METHOD_ORDER), method)


def _rank(value: str, order: tuple[str, ...]) -> int:
    return order.index(value) if value in order else len(order)

