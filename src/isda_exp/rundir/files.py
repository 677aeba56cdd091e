"""The files of a run directory (a contract the report builds on), each written atomically.

metrics.jsonl  one JSON object per finished epoch
summary.json   written once when the run has finished
failed.json    written when a run stopped on an error (removed when it is started again)
last.pt        the checkpoint, replaced atomically after every epoch (and on preemption, mid-epoch)
last.prev.pt   the checkpoint before it: the fallback when last.pt does not load
.lock          held (flock) by the process training the run; says who that is
tb/            TensorBoard scalars
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import UserError

METRICS, SUMMARY, FAILED, CHECKPOINT, CONFIG = (
    "metrics.jsonl", "summary.json", "failed.json", "last.pt", "run_config.json")
PREVIOUS = "last.prev.pt"
CHECKPOINT_KEYS = ("epoch", "history", "wall_time", "model", "classifier", "optimizer", "scheduler",
                   "scaler", "rng")
DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EFBIG: "file size limit exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.ENOTDIR: "a file stands where a folder should be",
               errno.EEXIST: "a file stands where a folder should be"}
log = logging.getLogger("isda_exp")


@contextlib.contextmanager
def disk_errors(path):
    """A full disk, a quota or a read-only mount is one line naming the file, not a traceback."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        fix = "free space (or pass out_root=DIR on another disk)" if full else \
            "pass out_root=DIR on a writable disk (or make this one writable)"
        raise UserError(f"{DISK_ERRORS[e.errno]} while writing {path}; {fix} and run the same "
                        "command again: a started run resumes from its last checkpoint") from None


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], object]) -> None:
    """Write through a temp file in the same folder and rename, so no reader sees half a file."""
    path = Path(path)
    with disk_errors(path):
        tmp = _write_temp(path, write)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _write_temp(path: Path, write: Callable[[io.BufferedWriter], object]) -> str:
    """A complete, fsynced temp file beside `path` (removed again if writing fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def finite(obj):
    """obj with every non-finite float as None: JSON files never hold bare NaN or Infinity."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(finite(obj), indent=2, allow_nan=False) + "\n").encode()))


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def save_checkpoint(path: Path, state: dict) -> None:
    """Replace `path` atomically, keeping the checkpoint it replaces as last.prev.pt.

    The state is serialised in memory first: torch.save into a file hides the errno of a failed
    write (a full disk would read "unexpected pos"). The new file is written completely before
    anything is rotated, so a failed save changes nothing; the previous file is then hard-linked,
    so a last.pt exists at every instant; the directory is fsynced so the renames survive a crash.
    """
    import torch  # here, so that reading run files (the report) does not import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    with disk_errors(path):
        tmp = _write_temp(path, lambda f: f.write(buf.getbuffer()))
        try:
            if path.exists():
                _keep_previous(path)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    fsync_dir(path.parent)


def _keep_previous(path: Path) -> None:
    """last.pt -> last.prev.pt by a hard link (a copy where links are not supported)."""
    previous, link = path.with_name(PREVIOUS), path.with_name(f".{PREVIOUS}.link.tmp")
    link.unlink(missing_ok=True)
    if previous.exists() and os.path.samefile(path, previous):
        previous.unlink()  # a rename onto another link of the same file would do nothing
    try:
        os.link(path, link)
    except OSError as e:
        if e.errno in DISK_ERRORS:
            raise
        shutil.copyfile(path, link)  # a file system without hard links
    os.replace(link, previous)


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint as data: tensors and plain Python values only, never code (weights_only)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise ValueError("not an isda-exp checkpoint (fields missing)")
    return ckpt


def why_unloadable(path: Path, error: Exception) -> str:
    """One line on why a checkpoint did not load."""
    text = str(error).strip()
    if "Weights only load failed" in text or "Unsupported global" in text or \
            type(error).__name__ == "UnpicklingError":
        return "it holds objects other than tensors and plain values (code?), refused"
    if isinstance(error, FileNotFoundError):
        return "it does not exist"
    first = text.splitlines()[0] if text else type(error).__name__
    return f"{type(error).__name__}: {first[:200]}"


def load_latest(run_dir: Path) -> tuple[dict, Path] | None:
    """The newest checkpoint that loads (last.pt, else last.prev.pt), or None for a fresh run.

    A last.pt that does not load falls back to last.prev.pt with a warning naming both; if
    neither loads, one UserError naming the files and the fix (nothing is deleted).
    """
    paths = [run_dir / CHECKPOINT, run_dir / PREVIOUS]
    present = [p for p in paths if p.exists()]
    if not present:
        return None
    failures = []
    for path in present:
        try:
            ckpt = load_checkpoint(path)
        except Exception as e:  # truncated, garbage, crafted: all mean "not usable"
            failures.append(f"{path} ({why_unloadable(path, e)})")
            continue
        if failures:
            log.warning(f"warning: cannot load {failures[0]}; resuming from the previous checkpoint "
                        f"{path} instead")
        return ckpt, path
    names = " and ".join(p.name for p in present)
    raise UserError(f"cannot load the checkpoint {' nor '.join(failures)}; restore it from a backup, "
                    f"or move {names} out of {run_dir} to train the run again from epoch 0")


def remove_stray_temps(run_dir: Path) -> list[Path]:
    """Temp files of a save that was killed (.last.pt.*.tmp, ...): only the lock holder calls this."""
    stray = [p for p in run_dir.glob(".*.tmp") if p.is_file()]
    for p in stray:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stray


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


def check_writable(folder: Path) -> None:
    """Create `folder` and write a probe file in it: one UserError line if it cannot be written."""
    folder = Path(folder)
    with disk_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)


class MetricsLog:
    """metrics.jsonl and TensorBoard, in step with the checkpoint's history after a resume."""

    def __init__(self, run_dir: Path, history: list[dict], tensorboard: bool):
        self.path = run_dir / METRICS
        # the checkpoint's history is the truth: drop lines of an epoch that was not checkpointed
        atomic_write(self.path, lambda f: f.write("".join(_line(r) for r in history).encode()))
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=len(history) + 1 if history else None)

    def append(self, row: dict) -> None:
        with disk_errors(self.path), open(self.path, "a") as f:
            f.write(_line(row))
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and not isinstance(value, str):  # eval_split is not a scalar
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _line(row: dict) -> str:
    return json.dumps(finite(row), allow_nan=False) + "\n"


def run_path(out_root: str | os.PathLike, dataset: str, model: str, aug: str, method: str,
             seed: int = 0) -> Path:
    """The directory a run trains in: configs/train.yaml's run_name, ${out_root}/${run_name}."""
    return Path(out_root) / dataset / model / aug / method / f"seed{seed}"


def run_dir_of(cfg) -> Path:
    """The directory of a composed run configuration (what the CLI trains in)."""
    return Path(cfg.out_root) / cfg.run_name
