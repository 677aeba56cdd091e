"""Loading run directories: what each run's files say (finished, in progress, failed) and its group key.

A run is a directory holding any of summary.json (finished), failed.json (failed), metrics.jsonl,
last.pt or run_config.json (in progress). A finished run's group comes from its summary.json, an
unfinished one's from its run_config.json, or failing that from the trainer's
``<dataset>/<model>/<aug>/<method>/seed<N>`` directory layout (needed only to draw its curve).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import UserError
from ..rundir import identity
from ..rundir.files import CHECKPOINT, CONFIG, FAILED, METRICS, SUMMARY
from ..rundir.moved import current_targets
from . import paper

RUN_MARKERS = frozenset({SUMMARY, FAILED, METRICS, CHECKPOINT, CONFIG})
REQUIRED_FIELDS = ("test_error_last10", "dataset", "model", "aug", "method")
FULL_TRAIN_SIZE = 50000
FULL_TEST_SIZE = 10000
# below these a run is a smoke run (a check of the code path), above a reduced reproduction
REDUCED_EPOCHS, REDUCED_IMAGES = 5, 1000

Key = tuple[str, str, str, str]  # (dataset, model, aug, method label)
HOLDOUT = " (hold-out)"  # ends the method label of runs evaluated on the hold-out (dataset.validation):
# their numbers never share a cell with test-set numbers, nor sit beside the paper's


class ReportError(UserError, ValueError):
    """Bad input to the report (missing directory, no runs): one line for the user."""

    def __init__(self, message: str, listing: str = ""):
        super().__init__(message)
        self.listing = listing  # the unfinished runs, shown before the message when there are any


# ----------------------------------------------------------------------------------- loading


@dataclass
class RunRecord:
    """One run directory and what its files say."""

    path: Path
    status: str  # "finished" | "in_progress" | "failed"
    summary: dict | None = None
    key: Key | None = None
    last_epoch: int | None = None
    error: str | None = None
    config: dict | None = None  # run_config.json, when readable

    @property
    def science(self) -> dict:
        """What runs averaged together must share (identity.comparable): flat keys."""
        return identity.comparable(self.summary or {}, self.config)

    @property
    def smoke(self) -> bool:
        """True for every run that is not the full recipe on the whole data set (reduced or
        miniature): its numbers are never set beside the paper's as a reproduction."""
        return self.scale != "full"

    @property
    def scale(self) -> str:
        """full: the recipe on the whole data set; reduced: real data, shorter or on subsets, but
        a real training run (at least REDUCED_EPOCHS epochs of REDUCED_IMAGES images, e.g. `make
        mini`); smoke: synthetic data, or a run smaller than that (the smoke tables)."""
        if self.summary is None:
            return _config_scale(self.config or {})
        s = self.summary
        epochs, recipe = number_or_none(s.get("epochs")), number_or_none(s.get("recipe_epochs"))
        train, test = number_or_none(s.get("train_size")), number_or_none(s.get("test_size"))
        short = epochs is not None and recipe is not None and epochs < recipe
        subset = (train is not None and train < FULL_TRAIN_SIZE) or (test is not None and test < FULL_TEST_SIZE)
        if s.get("eval_split") == "holdout":  # the hold-out comes out of the 50,000 training images
            subset = not (train is not None and test is not None and train + test >= FULL_TRAIN_SIZE)
        if s.get("dataset") == "synthetic" or (epochs is not None and epochs < REDUCED_EPOCHS) \
                or (train is not None and train < REDUCED_IMAGES):
            return "smoke"
        return "reduced" if short or subset else "full"


def _config_scale(config: dict) -> str:
    """The scale of a run that has no summary yet, from its run_config.json."""
    try:
        epochs, recipe = config["trainer"].get("epochs"), config["model"]["recipe"]["epochs"]
        data = config["dataset"]
    except (KeyError, TypeError, AttributeError):
        return "full"
    train = data.get("train_subset")
    if data.get("name") == "synthetic" or (epochs is not None and epochs < REDUCED_EPOCHS) \
            or (train is not None and train < REDUCED_IMAGES):
        return "smoke"
    if (epochs is not None and epochs < recipe) or train or data.get("test_subset"):
        return "reduced"
    return "full"


def number_or_none(value) -> float | None:
    """The value if it is a real number (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def load_runs(root: str | os.PathLike) -> list[RunRecord]:
    """Every run directory under ``root`` (recursively), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"runs directory '{root}' does not exist; pass the directory the "
                          "trainer wrote its runs into")
    runs = []
    for dirpath, dirnames, filenames in os.walk(root):
        names = set(filenames)
        if names & RUN_MARKERS:
            runs.append(_read_run(Path(dirpath), names))
            dirnames[:] = []  # a run's own subfolders (tensorboard, .hydra) hold no runs
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(runs, key=lambda r: str(r.path))


def _read_run(path: Path, names: set[str]) -> RunRecord:
    last = _last_epoch(path / METRICS) if METRICS in names else None
    config = None
    if CONFIG in names:
        with contextlib.suppress(OSError, ValueError):
            config = _read_json(path / CONFIG)
    key = _config_key(config) or _path_key(path)
    if SUMMARY in names:
        try:
            summary = _read_json(path / SUMMARY)
            key = _summary_key(summary)
        except (OSError, ValueError) as exc:
            return RunRecord(path, "failed", last_epoch=last, key=key, config=config,
                       error=f"unreadable summary.json: {exc}")
        return RunRecord(path, "finished", summary, key, last_epoch=summary.get("epochs", last), config=config)
    if FAILED in names:
        try:
            info = _read_json(path / FAILED)
            error = str(info.get("error", "no error message in failed.json"))
        except (OSError, ValueError) as exc:
            error = f"unreadable failed.json: {exc}"
        return RunRecord(path, "failed", key=key, last_epoch=last, error=error, config=config)
    return RunRecord(path, "in_progress", key=key, last_epoch=last, config=config)


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} holds {type(data).__name__}, expected a JSON object")
    return current_targets(data)  # a record written before a module moved names it as it is now


def _summary_key(summary: dict) -> Key:
    """The group key of a finished run; ValueError naming the field when the summary is unusable."""
    headline = "miou" if summary.get("task") == "segmentation" else "test_error_last10"  # Table 7's
    missing = [f for f in (headline, *REQUIRED_FIELDS[1:]) if f not in summary]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    if number_or_none(summary[headline]) is None:
        raise ValueError(f"{headline} is {summary[headline]!r}, not a number")
    label = identity.summary_label(summary) + (HOLDOUT if summary.get("eval_split") == "holdout" else "")
    return (str(summary["dataset"]), str(summary["model"]), str(summary["aug"]), label)


def _config_key(config: dict | None) -> Key | None:
    """Group of a run from its run_config.json (the trainer's composed config), if readable."""
    if not config:
        return None
    try:
        label = identity.config_label(config) + (HOLDOUT if config["dataset"].get("validation") else "")
        return (str(config["dataset"]["name"]), str(config["model"]["name"]),
                str(config["aug"]["name"]), label)
    except (KeyError, TypeError, AttributeError):
        return None


def _path_key(path: Path) -> Key | None:
    """Group of an unfinished run from the trainer's directory layout, or None if it differs."""
    parts = path.parts
    if len(parts) < 5 or not re.fullmatch(r"seed\d+", parts[-1]):
        return None
    dataset, model, aug, method = parts[-5:-1]
    match = re.fullmatch(r"(baseline|isda)(?:[-_](\w+))?", method)
    if match is None:
        return None
    return (dataset, model, aug, paper.method_label(match[1], match[2]))


def read_metrics(path: Path) -> dict[int, float]:
    """Epoch -> test error from metrics.jsonl; a torn last line or a bad row is skipped."""
    errors: dict[int, float] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return errors
    for line in lines:
        try:
            row = json.loads(line)
            epoch, error = row["epoch"], row["test_error"]
        except (ValueError, KeyError, TypeError):
            continue
        if number_or_none(epoch) is not None and number_or_none(error) is not None:
            errors[int(epoch)] = float(error)  # a resumed run may log an epoch twice: keep the last
    return errors


def _last_epoch(path: Path) -> int | None:
    epochs = read_metrics(path)
    return max(epochs) if epochs else None


def select_runs(runs: Iterable[RunRecord], **wanted: Iterable[str] | None) -> list[RunRecord]:
    """Runs whose key matches every given filter (dataset/model/aug/method); keyless runs stay."""
    fields = ("dataset", "model", "aug", "method")
    out = []
    for run in runs:
        if run.key is None or all(not wanted.get(f) or run.key[i] in wanted[f]
                                  for i, f in enumerate(fields)):
            out.append(run)
    return out
