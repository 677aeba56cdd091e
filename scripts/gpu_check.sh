#!/usr/bin/env bash
# The GPU acceptance check (scripts/gpu_check.py): tests marked cuda, 2-epoch runs per augmentation
# and precision, the GPU benchmarks, a 2-rank DDP run (2+ GPUs), the host syncs of a training step.
# Prints one JSON and one Markdown summary (also written to $OUT, default outputs/gpu_check).
# Exit 0: every step passed; 1: a step failed; 3: no CUDA GPU here (one line, no traceback).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=INT --kill-after=20 400 "$PY" scripts/gpu_check.py --out "${OUT:-outputs/gpu_check}" "$@"
