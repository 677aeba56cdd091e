"""One process per run: an exclusive lock on the run directory, held for the life of the run.

The lock is flock() on `<run dir>/.lock`: the OS releases it when the holder dies (kill -9,
node crash on NFS after the lease), so there are no stale locks to clean up. It works on local
disks and on NFS (Linux emulates flock with NFS byte-range locks); Lustre needs the `flock`
mount option, and where a file system refuses locks the run says so in one warning line and
goes on unlocked. A forked child (a DataLoader worker) inherits the lock's file descriptor and
with it the lock; each child closes its copy at once, so that the lock dies with the run's own
process: a worker outliving a kill -9 by a few seconds does not refuse the resuming command.
The holder writes its host, pid and start time into the file, so a second process can say who
holds the run.

A sweep job that finds its run locked (another sweep, another array job) does not fail the
sweep: it is recorded, and `SweepReport` (a Hydra callback) lists such runs at the end.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from ..errors import UserError
from .files import check_writable, disk_errors

LOCK = ".lock"
SWEEP_ENV = "ISDA_EXP_SWEEP_ID"
SWEEP_DIR = ".isda_sweeps"
log = logging.getLogger("isda_exp")
_HELD: set[int] = set()  # the lock descriptors this process took (a fork's child: none)


def _drop_inherited_locks() -> None:
    """In a forked child: close the copies of the parent's lock descriptors (flock locks belong
    to the open file, which the child shares), so the parent's death alone frees its runs."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunLocked(UserError):
    """The run is being trained by another process."""

    def __init__(self, run_dir: Path, holder: str):
        super().__init__(f"{run_dir} is being trained by another process ({holder}); wait for it to "
                         "finish, or stop it first: this command resumes the run once it is free")
        self.run_dir, self.holder = run_dir, holder


def holder_text(info: dict | None) -> str:
    if not info:
        return "holder not yet recorded"
    return f"host {info.get('host')}, pid {info.get('pid')}, since {info.get('since')}"


class RunLock:
    """`with RunLock(run_dir):` holds the run or raises RunLocked naming the holder."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        with disk_errors(self.path):  # a read-only output directory: one line
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise RunLocked(self.path.parent, holder_text(read_holder(self.path))) from None
            os.close(fd)  # ENOLCK, ENOSYS, EOPNOTSUPP: this file system has no locks
            log.warning(f"warning: cannot lock {self.path} ({os.strerror(e.errno)}): this file "
                        "system does not support locks (Lustre: mount with -o flock); make sure "
                        "only one process trains this run")
            return self
        self.fd = fd
        _HELD.add(fd)
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        with contextlib.suppress(OSError):
            os.fsync(fd)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd not in _HELD:  # None, or a forked child's copy, closed at the fork
            self.fd = None
            return
        _HELD.discard(self.fd)
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # before unlocking: never wipe the next holder's record
        os.close(self.fd)  # releases the lock
        self.fd = None


def read_holder(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- sweeps


def record_elsewhere(sweep_dir: Path, error: RunLocked) -> bool:
    """In a sweep: note a run that another process trains, for `SweepReport` to list."""
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


def _take(sweep_dir: Path, sweep_id: str, kind: str) -> list[dict]:
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


class SweepReport(Callback):
    """Hydra callback: give the sweep an id its jobs inherit; at its end, list the runs skipped
    because another process was training them ("running elsewhere") and the runs that failed,
    then exit with status 1 if any failed (one line each, no traceback)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        os.environ[SWEEP_ENV] = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_id = os.environ.pop(SWEEP_ENV, None)
        if not sweep_id:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        rows, failed = _take(sweep_dir, sweep_id, "elsewhere"), _take(sweep_dir, sweep_id, "failed")
        if rows:
            log.warning(f"{len(rows)} run(s) running elsewhere, not trained by this sweep "
                        "(run the sweep again later to pick up any that did not finish):")
            for r in rows:
                log.warning(f"  running elsewhere: {r['run']} ({r['holder']})")
        if failed:
            log.error(f"{len(failed)} run(s) of this sweep failed (the others ran; fix the cause "
                      "and run the sweep again: finished runs are skipped):")
            for r in failed:
                log.error(f"  failed: {r['run']}: {r['error']}")
            sys.stdout.flush()
            sys.exit(1)


class WritableOutput(Callback):
    """Hydra callback: an output directory that cannot be written is one line and exit 2, before
    Hydra creates the run's folder (which would otherwise end in Hydra's traceback)."""

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config, "run")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config, "sweep")

    @staticmethod
    def _check(config, mode: str) -> None:
        try:
            folder = Path(str(config.hydra[mode].dir))
        except Exception:  # an interpolation that does not resolve: Hydra says so itself
            return
        try:
            check_writable(folder)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
