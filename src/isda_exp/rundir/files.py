"""The files of a run directory (a contract the report and explain build on), written atomically.

metrics.jsonl  one JSON object per finished epoch (logs.MetricsLog)
summary.json   written once when the run has finished
failed.json    written when a run stopped on an error (removed when it is started again)
run_config.json the run's science config: what a resumed run must match (records)
last.pt        the checkpoint, replaced atomically after every epoch and on preemption, mid-epoch
last.prev.pt   the checkpoint before it: the fallback when last.pt does not load (checkpoint_files)
.lock          held (flock) by the process training the run; says who that is (lock)
tb/            TensorBoard scalars
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import UserError

METRICS, SUMMARY, FAILED, CHECKPOINT, CONFIG = (
    "metrics.jsonl", "summary.json", "failed.json", "last.pt", "run_config.json")
PREVIOUS = "last.prev.pt"
DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EFBIG: "file size limit exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.ENOTDIR: "a file stands where a folder should be",
               errno.EEXIST: "a file stands where a folder should be"}


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


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stray_temps(run_dir: Path) -> list[Path]:
    """Temp files of a save that was killed (.last.pt.*.tmp, ...): only the lock holder calls this."""
    stray = [p for p in run_dir.glob(".*.tmp") if p.is_file()]
    for p in stray:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stray


def check_writable(folder: Path) -> None:
    """Create `folder` and write a probe file in it: one UserError line if it cannot be written."""
    folder = Path(folder)
    with disk_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)


def run_path(out_root: str | os.PathLike, dataset: str, model: str, aug: str, method: str,
             seed: int = 0) -> Path:
    """The directory a run trains in: configs/train.yaml's run_name, ${out_root}/${run_name}."""
    return Path(out_root) / dataset / model / aug / method / f"seed{seed}"


def run_dir_of(cfg) -> Path:
    """The directory of a composed run configuration (what the CLI trains in)."""
    return Path(cfg.out_root) / cfg.run_name
