"""`python -m isda_exp`: the Hydra entry point of one run (or of each job of a -m sweep)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from . import distributed, preempt, runfiles
from .build import check_loss, science_config
from .errors import UserError
from .paths import config_dir
from .runlock import RunLock, RunLocked, record_elsewhere
from .validate import check_config

log = logging.getLogger("isda_exp")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        share_machine(cfg, hc)
        join_ranks(cfg)
        return run(cfg, run_dir)["test_error_last10"]
    except preempt.Preempted as e:  # checkpoint written and logged: hand the signal on
        preempt.redeliver(e.signum)
    except KeyboardInterrupt:  # a second Ctrl-C while pausing
        print("error: interrupted; the run resumes from its last checkpoint", file=sys.stderr)
        sys.exit(130)
    except RunLocked as e:
        if multirun:  # not a failure of the sweep: listed at its end
            record_elsewhere(Path(hc.sweep.dir), e)
            log.warning(f"running elsewhere: {e}")
            return None
        print(f"error: {e}", file=sys.stderr)
        distributed.leave(2)
    except UserError as e:
        if multirun:  # the sweep goes on with the other jobs and reports the failures at the end
            if not getattr(e, "recorded", False):
                with contextlib.suppress(OSError, UserError):  # e.g. the disk is full
                    runfiles.write_json(run_dir / runfiles.FAILED, {"error": str(e)})
            log.error(f"error: {e}")
            raise
        print(f"error: {e}", file=sys.stderr)
        distributed.leave(2)
    except Exception as e:
        if distributed.world() > 1:  # the first rank to fail tells why; the others say they followed
            if not (run_dir / runfiles.FAILED).exists():
                with contextlib.suppress(OSError, UserError):
                    runfiles.write_json(run_dir / runfiles.FAILED, {
                        "error": f"{type(e).__name__}: {e}", "rank": distributed.rank()})
            print(distributed.failure_message(e), file=sys.stderr, flush=True)
            distributed.leave(1)
        with contextlib.suppress(OSError, UserError):
            runfiles.write_json(run_dir / runfiles.FAILED, {"error": f"{type(e).__name__}: {e}"})
        raise


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train the run in `run_dir`, resuming it, or report it when it has already finished.

    Every value is checked first; then the run directory is locked for the whole run.
    """
    check_config(cfg)
    check_loss(cfg)  # isda=on with loss=focal, ...: refused before any work
    # under DDP the ranks of one run share its directory: rank 0 holds the lock for all of them
    lock = RunLock(run_dir) if distributed.is_main() else contextlib.nullcontext()
    with lock, preempt.catch_signals():
        runfiles.remove_stray_temps(run_dir)
        return _run_locked(cfg, run_dir)


def _run_locked(cfg: DictConfig, run_dir: Path) -> dict:
    check_same_run(cfg, run_dir)
    summary_path = run_dir / runfiles.SUMMARY
    if summary_path.exists():
        summary = runfiles.read_json(summary_path)
        log.info(f"{run_dir} has already finished (test error, {averaged(summary)}: "
                 f"{summary['test_error_last10']:.2f}%); nothing to train")
        return summary
    from .trainer import Trainer  # imported here so --help and config errors stay fast

    summary = Trainer(cfg, run_dir).fit()
    log.info(f"finished {run_dir}: test error {summary['test_error_last10']:.2f}% "
             f"({averaged(summary)}), final "
             f"{summary['test_error_final']:.2f}%, best {summary['test_error_best']:.2f}%")
    return summary


def averaged(summary: dict) -> str:
    """What test_error_last10 averages: the last 10 epochs, or all of a shorter run's."""
    n = min(10, int(summary.get("epochs") or 10))
    return "mean of the last 10 epochs" if n == 10 else \
        f"mean of all {n} epoch{'s' if n != 1 else ''}; the run is shorter than 10"


def check_same_run(cfg: DictConfig, run_dir: Path) -> None:
    """A run directory holds one configuration: refuse to resume or skip a different one.

    Only a run that has trained (a checkpoint or a summary) binds its directory, so a command
    that failed before training can be corrected and run again in place.
    """
    path = run_dir / runfiles.CONFIG
    current = science_config(cfg)
    started = (run_dir / runfiles.CHECKPOINT).exists() or (run_dir / runfiles.SUMMARY).exists()
    if not (started and path.exists()):
        if distributed.is_main():
            runfiles.write_json(path, current)
        return
    stored = runfiles.read_json(path)
    diff = [f"{k}: {a!r} -> {b!r}" for k, a, b in _diff(stored, current)]
    if diff:
        raise UserError(f"{run_dir} holds a run with another configuration ({'; '.join(diff[:4])}); "
                        "pass out_root=DIR (or hydra.run.dir=DIR) for a new run, or remove that directory")


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip("."), a, b


def join_ranks(cfg: DictConfig) -> None:
    """Under torchrun or a Slurm step of several tasks, join the other ranks of this one run.

    Each rank trains on its share of every global batch on its own device; rank 0 alone logs
    (the others log warnings and errors only, to the console) and writes the run's files.
    """
    cfg.device = distributed.setup(str(cfg.device), float(cfg.trainer.get("dist_timeout_s") or 600))
    if not distributed.is_main():
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.FileHandler):
                root.removeHandler(handler)
                handler.close()
        root.setLevel(logging.WARNING)


def share_machine(cfg: DictConfig, hc) -> None:
    """Under the joblib launcher, give each parallel job its share of cores and its own GPU."""
    launcher = str(hc.launcher.get("_target_", ""))
    if "joblib" not in launcher.lower():
        return
    n_jobs = int(hc.launcher.get("n_jobs", -1) or -1)
    cores = os.cpu_count() or 1
    n_jobs = cores if n_jobs < 1 else n_jobs
    if cfg.trainer.threads is None:
        torch.set_num_threads(max(1, cores // n_jobs))
    if cfg.trainer.num_workers == "auto":
        cfg.trainer.num_workers = max(1, cores // n_jobs - 1)
    if torch.cuda.is_available() and str(cfg.device) in ("auto", "cuda"):
        torch.cuda.set_device(hc.job.num % torch.cuda.device_count())
