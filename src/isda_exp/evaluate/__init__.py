"""Evaluation only: a run directory's checkpoint, or a weights file (the authors' released ISDA
ImageNet checkpoints included), on a data set, with the training run's own evaluation transform,
precision and batching, so a run evaluates to the numbers of its last test pass.

`python -m isda_exp.evaluate` (cli.py) prints top-1/top-5 error, loss and per-class error, and
writes them as JSON (`--json`) and every image's prediction as CSV (`--csv`); source.py builds what
is evaluated, metrics.py computes the numbers.
"""
from .metrics import Evaluation, evaluate
from .source import from_run, from_weights

__all__ = ["evaluate", "Evaluation", "from_run", "from_weights"]
