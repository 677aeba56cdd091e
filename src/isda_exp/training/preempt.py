"""Stop signals (Slurm preemption and time limits, submitit, Ctrl-C) turned into a clean pause.

While `catch_signals()` is active, SIGTERM, SIGUSR1, SIGUSR2, SIGINT and SIGHUP (the terminal
or ssh connection closed; left alone under nohup) only set a flag. The trainer polls
`requested()` after each step (a Python check, no device sync), writes a mid-epoch checkpoint
and raises `Preempted`. The CLI then hands the signal on with
`redeliver()`: to the handler that was there before (submitit's, which requeues the job) or,
when there was none, to the default action, so the process ends "killed by SIGTERM" as a
cluster expects, after the work is saved. Ctrl-C ends with status 130 and no traceback.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None),
                            getattr(signal, "SIGUSR2", None), signal.SIGINT,
                            getattr(signal, "SIGHUP", None)) if s is not None)  # SIGHUP: an ssh drop
_state: dict = {"signum": None, "previous": {}}


class Preempted(BaseException):
    """The run paused on a signal after writing its checkpoint (not an error of the run).

    A BaseException, so that Hydra's job runner does not record it as a failed job.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def requested() -> int | None:
    """The signal that asked the run to stop, or None."""
    return _state["signum"]


def name(signum: int) -> str:
    return signal.Signals(signum).name


def _handler(signum, frame) -> None:
    if _state["signum"] == signal.SIGINT and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now (checkpoints are atomic: nothing torn)
    if _state["signum"] is None:
        _state["signum"] = signum


@contextlib.contextmanager
def catch_signals():
    """Install the flag-setting handlers (main thread only) and restore the previous ones."""
    _state["signum"] = None
    previous = {}
    with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
        for s in SIGNALS:
            if s == getattr(signal, "SIGHUP", None) and signal.getsignal(s) == signal.SIG_IGN:
                continue  # under nohup a closed terminal is not a reason to stop
            previous[s] = signal.signal(s, _handler)
    _state["previous"] = previous
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state["signum"] = None  # handled (Preempted carries it): no stop pending after the run


def redeliver(signum: int) -> None:
    """After the checkpoint: let the signal do what it would have done without us, then exit.

    A Python handler from before (submitit requeues the job and exits) runs now. The default
    action ends the process by the signal (exit status 128 + signum). Ctrl-C, or a handler that
    returns, ends with status 128 + signum.
    """
    handler = _state["previous"].get(signum, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    if signum != signal.SIGINT and handler is not signal.SIG_IGN and handler is not None:
        signal.signal(signum, handler)
        os.kill(os.getpid(), signum)  # a Python handler runs at the next bytecode
    sys.exit(128 + signum)
