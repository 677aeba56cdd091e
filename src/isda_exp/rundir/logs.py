"""A run's logs: train.log (Hydra's job logging writes through RunLog) and the per-epoch
metrics (metrics.jsonl and TensorBoard, MetricsLog)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .files import METRICS, atomic_write, disk_errors, finite


class RunLog(logging.FileHandler):
    """train.log (Hydra's job logging): opened at the first record, so a command refused before
    it logs leaves no file; a directory that cannot be written drops the file log in silence
    instead of printing a logging traceback (the run then stops with one line at its first write)."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None):
        super().__init__(filename, mode, encoding, delay=True)
        self.broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.broken:
            return
        try:
            super().emit(record)
        except OSError:
            self.broken = True

    def handleError(self, record: logging.LogRecord) -> None:
        self.broken = True


class MetricsLog:
    """metrics.jsonl and TensorBoard, in step with the checkpoint's history after a resume."""

    def __init__(self, run_dir: Path, history: list[dict], tensorboard: bool):
        self.path = run_dir / METRICS
        # the checkpoint's history is the truth: drop lines of an epoch that was not checkpointed
        atomic_write(self.path, lambda f: f.write("".join(_line(r) for r in history).encode()))
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # events after the checkpoint's last row are dropped (epochs 1..n, or iterations)
            last = history[-1].get("epoch", history[-1].get("iteration")) if history else None
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=last + 1 if history else None)

    def append(self, row: dict) -> None:
        with disk_errors(self.path), open(self.path, "a") as f:
            f.write(_line(row))
        if self.writer is not None:
            step_key = "epoch" if "epoch" in row else "iteration"  # segmentation rows: iterations
            for key, value in row.items():
                if isinstance(value, dict):  # per-class IoU: one scalar per class
                    for name, v in value.items():
                        self.writer.add_scalar(f"{key}/{name}", v, row[step_key])
                elif key != step_key and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, row[step_key])  # not eval_split, bad_files
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _line(row: dict) -> str:
    return json.dumps(finite(row), allow_nan=False) + "\n"
