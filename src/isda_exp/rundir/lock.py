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

A sweep job that finds its run locked does not fail the sweep: isda_exp.sweeps.records notes it
and the sweep lists it at its end (isda_exp.cli.callbacks.SweepReport).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import UserError
from .files import disk_errors

LOCK = ".lock"
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
