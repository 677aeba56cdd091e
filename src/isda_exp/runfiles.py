"""The files of a run directory (a contract the report builds on), each written atomically.

metrics.jsonl  one JSON object per finished epoch
summary.json   written once when the run has finished
failed.json    written when a run stopped on an error (removed when it is started again)
last.pt        the checkpoint, replaced atomically after every epoch
tb/            TensorBoard scalars
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

METRICS, SUMMARY, FAILED, CHECKPOINT, CONFIG = (
    "metrics.jsonl", "summary.json", "failed.json", "last.pt", "run_config.json")


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], object]) -> None:
    """Write through a temp file in the same folder and rename, so no reader sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def save_checkpoint(path: Path, state: dict) -> None:
    import torch  # here, so that reading run files (the report) does not import torch

    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


class MetricsLog:
    """metrics.jsonl and TensorBoard, in step with the checkpoint's history after a resume."""

    def __init__(self, run_dir: Path, history: list[dict], tensorboard: bool):
        self.path = run_dir / METRICS
        # the checkpoint's history is the truth: drop lines of an epoch that was not checkpointed
        atomic_write(self.path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in history).encode()))
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=len(history) + 1 if history else None)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and not isinstance(value, str):  # eval_split is not a scalar
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
