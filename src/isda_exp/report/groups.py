"""Grouping finished runs into cells: mean and sample std of the last-10 error across seeds."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..rundir import identity
from . import paper
from .runs import Key, ReportError, RunRecord, number_or_none

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
    scale: str = "full"  # full | reduced | smoke (report.runs.RunRecord.scale)

    @property
    def key(self) -> Key:
        return (self.dataset, self.model, self.aug, self.method)

    @property
    def diff(self) -> float | None:
        return None if self.paper_mean is None else self.error_mean - self.paper_mean


def aggregate(runs: Iterable[RunRecord]) -> list[Row]:
    """Group finished runs by (dataset, model, aug, method/variant), in the paper's order.

    Runs of one group must share their whole science config except the seed
    (identity.comparable): a group that would average unlike runs is refused (ReportError naming
    the keys that differ and the runs); a seed finished twice is counted once, with a note.
    """
    groups: dict[Key, list[RunRecord]] = defaultdict(list)
    for run in runs:  # segmentation runs (mIoU, no test error) are Table 7's (report.table7)
        if run.status == "finished" and run.key is not None and "test_error_last10" in run.summary:
            groups[run.key].append(run)
    return sorted((_row(key, *_members(key, members)) for key, members in groups.items()),
                  key=lambda r: group_order(r.key))


def _row(key: Key, members: list[RunRecord], notes: tuple[str, ...]) -> Row:
    errors = [float(r.summary["test_error_last10"]) for r in members]
    n = len(errors)
    mean = math.fsum(errors) / n
    std = math.sqrt(math.fsum((e - mean) ** 2 for e in errors) / (n - 1)) if n > 1 else None
    published = paper.paper_number(*key)
    epochs = tuple(sorted({int(r.summary["epochs"]) for r in members
                           if number_or_none(r.summary.get("epochs")) is not None}))
    return Row(*key, seeds=n, error_mean=mean, error_std=std,
               paper_mean=published[0] if published else None,
               paper_std=published[1] if published else None,
               smoke=any(r.smoke for r in members), epochs=epochs, scale=coarsest(members),
               runs=tuple(r.path for r in members), notes=notes)


def coarsest(members) -> str:
    """The group's scale: smoke if any run is a smoke run, else reduced if any is, else full."""
    scales = {m.scale for m in members}
    return next(s for s in ("smoke", "reduced", "full") if s in scales or s == "full")


def _members(key: Key, members: list[RunRecord]) -> tuple[list[RunRecord], tuple[str, ...]]:
    """The runs to average, one per seed, after checking that they are alike."""
    members = sorted(members, key=lambda r: str(r.path))
    sciences = [r.science for r in members]
    differ = identity.differences(sciences)
    if differ:
        raise ReportError(f"{'/'.join(key)} holds runs whose science configs differ, which the "
                          f"report never averages: {_differing(differ, members, sciences)}; move "
                          "the odd runs to another folder (or give them another out_root) and "
                          "report each folder on its own")
    kept: dict[object, RunRecord] = {}
    notes = []
    for run in members:
        seed = run.summary.get("seed")
        if seed is not None and seed in kept:
            notes.append(f"{'/'.join(key)}: seed {seed} finished twice ({kept[seed].path} and "
                         f"{run.path}); counted once")
            continue
        kept[seed if seed is not None else id(run)] = run
    return list(kept.values()), tuple(notes)


def _differing(keys: list[str], members: list[RunRecord], sciences: list[dict]) -> str:
    """'key: value (runs), value (runs)' for the first differing keys."""
    parts = []
    for k in keys[:3]:
        by_value: dict[str, list[str]] = defaultdict(list)
        for run, science in zip(members, sciences):
            if k in science:
                by_value[repr(science[k])].append(str(run.path))
        values = [f"{v} in {', '.join(paths[:2])}{' ...' if len(paths) > 2 else ''}"
                  for v, paths in by_value.items()]
        parts.append(f"{k} = {'; '.join(values)}")
    more = f" (and {len(keys) - 3} more keys)" if len(keys) > 3 else ""
    return " | ".join(parts) + more


def group_order(key: Key) -> tuple:
    dataset, model, aug, method = key
    models = tuple(paper.MODEL_NAMES)
    return (_rank(dataset, DATASET_ORDER), dataset, _rank(model, models), model,
            _rank(aug, AUG_ORDER), aug, _rank(method, paper.METHOD_ORDER), method)


def _rank(value: str, order: tuple[str, ...]) -> int:
    return order.index(value) if value in order else len(order)

