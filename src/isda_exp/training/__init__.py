"""How a run trains: config -> objects (build.py, values checked by validate.py), the loop
(trainer.py: when), the step engine (engine.py: how), the LR schedules, what a checkpoint holds,
the summary, and stop signals (preempt.py); segmentation runs (dataset.task=segmentation) have
their own builder, step engine, loop, evaluation and summary (seg_build, seg_engine, seg_trainer,
seg_eval, seg_summary). Names load on first use: the command line imports
validate and preempt without torch."""
import importlib

_EXPORTS = {"Trainer": "trainer", "Diverged": "trainer", "build_run": "build", "RunObjects": "build",
            "Engine": "engine", "lr_factor": "schedule", "check_config": "validate",
            "SegTrainer": "seg_trainer", "build_seg_run": "seg_build", "SegEngine": "seg_engine"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
