"""Hydra callbacks of the command line (configs/train.yaml's hydra.callbacks): an output folder
that cannot be written is refused in one line before Hydra creates it, and a sweep lists at its
end the runs it skipped and the runs that failed."""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from ..errors import UserError
from ..rundir.files import check_writable
from ..sweeps.records import SWEEP_ENV, take

log = logging.getLogger("isda_exp")


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
        rows, failed = take(sweep_dir, sweep_id, "elsewhere"), take(sweep_dir, sweep_id, "failed")
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
