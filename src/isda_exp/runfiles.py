"""The files of a run directory (a contract the report builds on), each written atomically.

metrics.jsonl  one JSON object per finished epoch
summary.json   written once when the run has finished
failed.json    written when a run stopped on an error (removed when it is started again)
last.pt        the checkpoint, replaced atomically after every epoch
tb/            TensorBoard scalars
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

METRICS, SUMMARY, FAILED, CHECKPOINT, CONFIG = (
    "metrics.jsonl", "summary.json", "failed.json", "last.pt", "run_config.json")


def atomic_write(path: Path, write) -> None:
    """write(fileobj) into a temp file beside `path`, fsync, then rename: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
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
                if key != "epoch":
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
