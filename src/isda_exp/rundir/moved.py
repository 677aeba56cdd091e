"""The one map of `_target_`s that moved, so run records written before a move stay valid.

Run directories store their composed config: run_config.json and summary.json's `science` hold
the `_target_` of the model, data set and loss, .hydra/config.yaml every node's. When a module
moves, those records would no longer match a new command of the same configuration (the run would
refuse to resume, the report to average it with new runs) or rebuild (explain). Everything that
reads a record reads it through `current_targets`, which names each moved target as it is now.
"""
from __future__ import annotations

# old `_target_` -> its name now (the package layout of version 0.2)
MOVED_TARGETS = {
    "isda_exp.isda.ISDALoss": "isda_exp.losses.ISDALoss",
    "isda_exp.folder.load_folder": "isda_exp.data.folder.load_folder",
    "isda_exp.augment.build_augment": "isda_exp.data.build_augment",
}


def current_targets(record):
    """The record (nested dicts and lists, as read from JSON or YAML) with every moved `_target_`
    renamed; anything else is returned as it is."""
    if isinstance(record, dict):
        return {k: MOVED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str)
                else current_targets(v) for k, v in record.items()}
    if isinstance(record, list):
        return [current_targets(v) for v in record]
    return record
