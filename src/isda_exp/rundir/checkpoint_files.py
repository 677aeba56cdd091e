"""The checkpoint files of a run: last.pt written atomically with the one before kept as
last.prev.pt, and read back as data (tensors and plain values, never code), falling back to the
previous file when the newest does not load. What a checkpoint holds is
isda_exp.training.checkpoint's."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from pathlib import Path

from ..errors import UserError
from .files import CHECKPOINT, DISK_ERRORS, PREVIOUS, _write_temp, disk_errors, fsync_dir

CHECKPOINT_KEYS = ("epoch", "history", "wall_time", "model", "classifier", "optimizer", "scheduler",
                   "scaler", "rng")
log = logging.getLogger("isda_exp")


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
