"""`python -m isda_exp`: the Hydra entry point of one run (or of each job of a -m sweep).

torch (2-3 s to import) and the modules that need it are imported by the functions that use
them: a mistyped command, --help or a refused config answers in about a second.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, NamedTuple

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .. import rundir
from ..errors import UserError
from ..paths import config_dir
from ..rundir.identity import is_segmentation
from ..rundir import (
    Refused,
    RunLock,
    RunLocked,
    averaged,
    check_same_run,
    read_record,
    write_records,
)
from ..sweeps.records import record_elsewhere, record_failed
from ..training import preempt
from ..training.validate import check_added_keys, check_config, check_known_keys

log = logging.getLogger("isda_exp")


def main() -> None:
    """`python -m isda_exp`: the command line's keys are checked, then Hydra runs the job(s)."""
    try:
        check_command(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


def check_command(args: list[str]) -> None:
    """An unknown key set without `+` is one line naming the closest key (Hydra's own message
    is several lines). Anything else Hydra parses and reports itself."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides(
            get_args_parser().parse_known_args(args)[0].overrides)
    except BaseException:  # noqa: B036 (argparse exits on --help and bad flags: Hydra's to report)
        return
    groups, keys, choices = config_groups(), [], []
    for o in overrides:
        key = o.key_or_group
        if o.is_delete() or o.is_add() or o.is_force_add() or key.split(".")[0].split("/")[0] == "hydra":
            continue
        if key in groups or "/" in key:  # a group choice: the first of a sweep's choices will do
            value = next(iter(o.sweep_string_iterator())) if o.is_sweep_override() \
                else o.get_value_element_as_str()
            choices.append(f"{o.get_key_element()}={value}")
        else:
            keys.append(key)
    if not keys:
        return
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=choices)
    except Exception:  # a bad choice: Hydra lists the valid ones
        return
    check_known_keys(cfg, keys)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        record = hydra_record(cfg, hc)  # before share_machine/join_ranks fill in values
        check_added_keys(cfg, list(hc.overrides.task), config_groups())
        share_machine(cfg, hc)
        join_ranks(cfg)
        return headline(run(cfg, run_dir, record))
    except preempt.Preempted as e:  # checkpoint written and logged: hand the signal on
        preempt.redeliver(e.signum)
    except KeyboardInterrupt:  # Ctrl-C before the handlers are in place, or a second one
        print("error: interrupted; run the same command to resume from the last checkpoint",
              file=sys.stderr)
        sys.exit(130)
    except RunLocked as e:
        if multirun:  # not a failure of the sweep: listed at its end
            record_elsewhere(Path(hc.sweep.dir), e)
            log.warning(f"running elsewhere: {e}")
            return None
        print(f"error: {e}", file=sys.stderr)
        _leave(2)
    except Exception as e:
        failed(e, run_dir, Path(hc.sweep.dir) if multirun else None)
    return None


def failed(e: Exception, run_dir: Path, sweep_dir: Path | None) -> None:
    """A run that stopped on an error. Bad input: one line, exit 2. A bug: failed.json and the
    traceback. In a sweep: failed.json (unless the command was refused), one line, and the next
    job goes on; the sweep lists its failed runs at the end (cli.callbacks.SweepReport) and exits 1."""
    distributed = _distributed()
    user = isinstance(e, UserError)
    text = str(e) if user else f"{type(e).__name__}: {e}"
    info = {"error": text} if user else {"error": text, "traceback": traceback.format_exc()}
    # under several ranks the first to fail tells why; the others follow
    if distributed is not None and distributed.world() > 1 and not user:
        if not (run_dir / rundir.FAILED).exists():
            _write_failed(run_dir, {**info, "rank": distributed.rank()})
        print(distributed.failure_message(e), file=sys.stderr, flush=True)
        distributed.leave(1)
    if (sweep_dir is not None or not user) and not getattr(e, "recorded", False):
        _write_failed(run_dir, info)
    if sweep_dir is not None:
        if not record_failed(sweep_dir, run_dir, text):
            raise e  # no sweep record (our callback is not configured): Hydra reports the job
        line = f"error: {text}" + ("" if user else f" (traceback in {run_dir / rundir.FAILED})")
        if isinstance(e, Refused):  # not into the run's train.log: a refused command changes no file
            print(line, file=sys.stderr, flush=True)
        else:
            log.error(line)
        return
    if not user:
        raise e
    print(f"error: {e}", file=sys.stderr)
    _leave(2)


def _distributed():
    """isda_exp.parallel.distributed if this process imported it, else None: a process that never got as
    far as a run cannot have joined ranks (and need not import torch to say so)."""
    return sys.modules.get("isda_exp.parallel.distributed")


def _leave(code: int) -> None:
    """Exit with `code`; a rank of several leaves through isda_exp.parallel.distributed.leave."""
    distributed = _distributed()
    if distributed is None:
        sys.exit(code)
    distributed.leave(code)


def _write_failed(run_dir: Path, info: dict) -> None:
    if run_dir.is_dir():  # never create a run directory just to say it failed
        with contextlib.suppress(OSError, UserError):  # e.g. the disk is full
            rundir.write_json(run_dir / rundir.FAILED, info)




def hydra_record(cfg: DictConfig, hc) -> dict[str, str]:
    """Hydra's record of the command (.hydra/), written by the run when it trains: a command
    that is refused changes no file of the run (hydra.output_subdir is null in train.yaml)."""
    return {"config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc)})),
            "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task)))}


def config_groups() -> tuple[str, ...]:
    return tuple(p.name for p in Path(config_dir()).iterdir() if p.is_dir())


def run(cfg: DictConfig, run_dir: Path, record: dict[str, str] | None = None) -> dict:
    """Train the run in `run_dir`, resuming it, or report it when it has already finished.

    Every value is checked first; then the run directory is locked for the whole run.
    `record`: Hydra's files for .hydra/, written when the run trains.
    """
    check_config(cfg)
    from ..parallel import distributed
    from ..training.build import resolve_auto

    resolve_auto(cfg)  # precision=auto -> what this device runs: the science config holds that
    task(cfg).check(cfg)  # isda=on with loss=focal, aug=cutout without a hole, ...: before any work
    # under DDP the ranks of one run share its directory: rank 0 holds the lock for all of them
    lock = RunLock(run_dir) if distributed.is_main() else contextlib.nullcontext()
    with lock, preempt.catch_signals():
        rundir.remove_stray_temps(run_dir)
        return _run_locked(cfg, run_dir, record or {})


def _run_locked(cfg: DictConfig, run_dir: Path, record: dict[str, str]) -> dict:
    from ..parallel import distributed

    check_same_run(cfg, run_dir)
    summary_path = run_dir / rundir.SUMMARY
    chosen = task(cfg)
    if summary_path.exists():
        summary = read_record(summary_path, chosen.headline)
        log.info(f"{run_dir} has already finished ({_finished_text(summary, short=True)}); nothing to train")
        return summary
    trainer = chosen.trainer(cfg, run_dir)  # the data is loaded: the run starts here
    if distributed.is_main():
        write_records(cfg, run_dir, record)
    summary = trainer.fit()
    log.info(f"finished {run_dir}: {_finished_text(summary)}")
    return summary


class Task(NamedTuple):
    check: Callable  # the checks only building can judge, before any file is written
    trainer: Callable  # (cfg, run_dir) -> an object whose fit() trains and returns the summary
    headline: str  # the summary's figure


def task(cfg: DictConfig) -> Task:
    """---- The one dispatch by task: a data set declaring `task: segmentation` trains with the
    segmentation trainer (iterations, per-pixel ISDA, mIoU), every other with the epoch trainer."""
    if is_segmentation(cfg):
        from ..training.seg_build import check_seg_buildable
        from ..training.seg_trainer import SegTrainer

        return Task(check_seg_buildable, SegTrainer, "miou")
    from ..training.build import check_buildable
    from ..training.trainer import Trainer

    return Task(check_buildable, Trainer, "test_error_last10")


def headline(summary: dict) -> float:
    """What a run returns to Hydra: the test error (classification) or the mIoU (segmentation)."""
    return summary["miou"] if summary.get("task") == "segmentation" else summary["test_error_last10"]


def _finished_text(summary: dict, short: bool = False) -> str:
    """The run's figures for the log: short, when it had finished before this command."""
    if summary.get("task") == "segmentation":
        ms = f", multi-scale {summary['miou_ms']:.2f}%, + flip {summary['miou_msf']:.2f}%" \
            if "miou_ms" in summary else ""
        return f"mIoU {summary['miou']:.2f}%{ms} after {summary['iterations']} iterations"
    if short:
        return f"test error, {averaged(summary)}: {summary['test_error_last10']:.2f}%"
    return (f"test error {summary['test_error_last10']:.2f}% ({averaged(summary)}), final "
            f"{summary['test_error_final']:.2f}%, best {summary['test_error_best']:.2f}%")














def join_ranks(cfg: DictConfig) -> None:
    """Under torchrun or a Slurm step of several tasks, join the other ranks of this one run.

    Each rank trains on its share of every global batch on its own device; rank 0 alone logs
    (the others log warnings and errors only, to the console) and writes the run's files.
    """
    from ..parallel.launch import environment

    if environment() is None:  # one process: no ranks to join (and torch not imported yet)
        return
    from ..parallel import distributed

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
    import torch

    if cfg.trainer.threads is None:
        torch.set_num_threads(max(1, cores // n_jobs))
    if cfg.trainer.num_workers == "auto":
        cfg.trainer.num_workers = max(1, cores // n_jobs - 1)
    if torch.cuda.is_available() and str(cfg.device) in ("auto", "cuda"):
        torch.cuda.set_device(hc.job.num % torch.cuda.device_count())
