"""isda-exp: Implicit Semantic Data Augmentation (ISDA, NeurIPS 2019), reproduced and extended.

The front doors, loaded on first use (importing isda_exp imports neither torch nor Hydra):

    from isda_exp import ISDALoss, isda_ratio      # the ISDA loss for your own training loop
    from isda_exp import create_model, list_models # the paper's model zoo

Everything else lives in subpackages named for what they hold: losses, models, data, training,
rundir, parallel, cli, sweeps, report, explain, evaluate; `isda_exp.compat` takes the authors'
ISDA call unchanged.
"""

__version__ = "0.2.0"
_EXPORTS = {"ISDALoss": "losses", "isda_ratio": "losses", "create_model": "models",
            "list_models": "models"}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def _quiet_ctrl_c() -> None:
    """`python -m isda_exp...`: Ctrl-C before a run's own handlers are in place (while torch and
    Hydra load, between the jobs of a sweep) ends at once with one line and status 130. Nothing
    is being written then, and an interrupted import would print a long traceback or leave a
    half-imported module that fails later. training.preempt.catch_signals takes over during a run.
    Only under `python -m` and the console scripts (isda-train, ...): a program that imports
    isda_exp keeps its own Ctrl-C."""
    import os
    import signal
    import sys

    ours = sys.argv[:1] == ["-m"] or os.path.basename(sys.argv[0] if sys.argv else "").startswith("isda-")
    if not ours or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return  # imported by another program, or Ctrl-C is already someone else's

    def stop(signum, frame):
        os.write(2, b"error: interrupted; run the same command again (a started run resumes "
                    b"from its last checkpoint)\n")
        os._exit(130)
    signal.signal(signal.SIGINT, stop)


_quiet_ctrl_c()
