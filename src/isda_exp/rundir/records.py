"""A run's records and the rule that binds a run directory to one configuration.

run_config.json holds the science config (isda_exp.rundir.identity) of the run trained there; a
run that has trained (a checkpoint or summary.json) is resumed or skipped only by a command of the
same science config, else refused in one line (`Refused`) without changing any file. Records
written before a module moved name old `_target_`s; they are read through rundir.moved.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..errors import UserError
from .files import CHECKPOINT, CONFIG, SUMMARY, atomic_write, read_json, write_json
from .identity import science_config
from .moved import current_targets


class Refused(UserError):
    """The command does not fit the run in its directory: one line, and no file of the run is
    changed (no failed.json either: the run itself did not fail)."""

    recorded = True


def write_records(cfg: DictConfig, run_dir: Path, record: dict[str, str]) -> None:
    """run_config.json (until the run has a checkpoint, which binds it) and Hydra's .hydra/."""
    if not started(run_dir):
        write_json(run_dir / CONFIG, science_config(cfg))
    for name, text in record.items():
        atomic_write(run_dir / ".hydra" / name, lambda f, t=text: f.write(t.encode()))


def started(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT).exists() or (run_dir / SUMMARY).exists()


def read_record(path: Path, needed: str | None = None) -> dict:
    """A run's record (run_config.json, summary.json), or Refused naming the file and the fix."""
    try:
        data = current_targets(read_json(path))
        if not isinstance(data, dict) or (needed and needed not in data):
            raise ValueError(f"no {needed or 'JSON object'} in it")
    except (OSError, ValueError) as e:
        raise Refused(f"{path} cannot be read ({type(e).__name__}: {str(e)[:120]}): this run's "
                      f"record is damaged, so it is neither resumed nor skipped; restore the file, "
                      f"or move the run aside (mv {path.parent} {path.parent}.damaged) and run the "
                      "same command to train it anew") from None
    return data


def averaged(summary: dict) -> str:
    """What test_error_last10 averages: the last 10 epochs, or all of a shorter run's."""
    n = min(10, int(summary.get("epochs") or 10))
    return "mean of the last 10 epochs" if n == 10 else \
        f"mean of all {n} epoch{'s' if n != 1 else ''}; the run is shorter than 10"


def check_same_run(cfg: DictConfig, run_dir: Path) -> None:
    """A run directory holds one configuration: refuse to resume or skip a different one.

    Only a run that has trained (a checkpoint or a summary) binds its directory, so a command
    that failed before training can be corrected and run again in place. A trained run whose
    run_config.json is missing or damaged is refused: its configuration is unknown.
    """
    if not started(run_dir):
        return
    path = run_dir / CONFIG
    if not path.exists():
        raise Refused(f"{run_dir} holds a trained run (a checkpoint or summary.json) but no "
                      f"{CONFIG}, so its configuration is unknown and it is not resumed; "
                      f"move the run aside (mv {run_dir} {run_dir}.unknown) and run the same "
                      "command to train it anew, or pass out_root=DIR for a new run")
    stored = read_record(path)
    diff = [f"{k}: {a!r} -> {b!r}" for k, a, b in _diff(stored, science_config(cfg))]
    if diff:
        raise Refused(f"{run_dir} holds a run with another configuration ({'; '.join(diff[:4])}); "
                      "pass out_root=DIR (or hydra.run.dir=DIR) for a new run, or remove that directory")


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip("."), a, b
