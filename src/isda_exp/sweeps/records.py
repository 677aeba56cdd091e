"""A sweep's bookkeeping: the runs it skipped (another process trains them) and the runs that
failed, noted by each job as one JSON line in the sweep folder and taken at the sweep's end by
isda_exp.cli.callbacks.SweepReport. The sweep id travels to the jobs in an environment variable
(joblib and submitit jobs inherit it)."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

SWEEP_ENV = "ISDA_EXP_SWEEP_ID"
SWEEP_DIR = ".isda_sweeps"


def record_elsewhere(sweep_dir: Path, error) -> bool:
    """In a sweep: note a run that another process trains (a rundir.RunLocked), to list at the end."""
    return record(sweep_dir, "elsewhere", {"run": str(error.run_dir), "holder": error.holder})


def record_failed(sweep_dir: Path, run_dir: Path, error: str) -> bool:
    """In a sweep: note a run that failed, for `SweepReport` to list at the end."""
    return record(sweep_dir, "failed", {"run": str(run_dir), "error": error})


def record(sweep_dir: Path, kind: str, row: dict) -> bool:
    sweep_id = os.environ.get(SWEEP_ENV)
    if not sweep_id:
        return False
    path = Path(sweep_dir) / SWEEP_DIR / f"{sweep_id}.{kind}"
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:  # one short line per append: whole lines even from many jobs
            f.write(json.dumps(row) + "\n")
        return True
    return False


def take(sweep_dir: Path, sweep_id: str, kind: str) -> list[dict]:
    """The rows a sweep recorded of one kind; the record is removed."""
    path = Path(sweep_dir) / SWEEP_DIR / f"{sweep_id}.{kind}"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only when no other sweep has a record there
    return rows
