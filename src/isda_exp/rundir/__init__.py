"""The run directory, a contract the report and explain build on: the file names and atomic
writes (files.py), the checkpoint files (checkpoint_files.py), the logs (logs.py), the lock held by
the process training the run (lock.py), its records and the rule binding a directory to one
configuration (records.py), the run's label and science config (identity.py) and the map of
`_target_`s that moved (moved.py). No torch at import: the report reads runs without it."""
from .checkpoint_files import (
                    CHECKPOINT_KEYS,
                    load_checkpoint,
                    load_latest,
                    save_checkpoint,
                    why_unloadable,
)
from .files import (
                    CHECKPOINT,
                    CONFIG,
                    FAILED,
                    METRICS,
                    PREVIOUS,
                    SUMMARY,
                    atomic_write,
                    check_writable,
                    disk_errors,
                    read_json,
                    remove_stray_temps,
                    run_dir_of,
                    run_path,
                    write_json,
)
from .identity import science_config
from .lock import RunLock, RunLocked
from .logs import MetricsLog, RunLog
from .moved import current_targets
from .records import Refused, averaged, check_same_run, read_record, started, write_records

__all__ = ["CHECKPOINT", "CONFIG", "FAILED", "METRICS", "PREVIOUS", "SUMMARY", "CHECKPOINT_KEYS",
           "atomic_write", "check_writable", "disk_errors", "read_json", "write_json",
           "remove_stray_temps", "run_path", "run_dir_of", "save_checkpoint", "load_checkpoint",
           "load_latest", "why_unloadable", "MetricsLog", "RunLog", "RunLock", "RunLocked",
           "Refused", "averaged", "check_same_run", "read_record", "started", "write_records",
           "science_config", "current_targets"]
