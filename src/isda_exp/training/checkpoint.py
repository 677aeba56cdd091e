"""What a checkpoint holds and how a run is put back from it (isda_exp.rundir writes and reads the file).

Everything is tensors and plain values, so a checkpoint loads with torch.load(weights_only=True):
the model, classifier, optimizer, schedule, the criterion's state (ISDA statistics, centre-loss
centres, L-Softmax step), the grad scaler and every RNG state, plus the run's progress.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def capture(run, epoch: int, history: list[dict], wall: float, config: dict,
            partial: dict | None = None) -> dict:
    """`epoch` epochs done; `partial`: how far into the next one (a mid-epoch checkpoint)."""
    engine = run.engine
    return {
        "epoch": epoch, "partial": partial, "history": history, "wall_time": wall, "config": config,
        "model": engine.net.state_dict(), "classifier": engine.fc.state_dict(),
        "optimizer": engine.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "isda": engine.criterion.state_dict(),  # ISDA's statistics, the centre loss's centres, ...
        "scaler": engine.scaler.state_dict(), "rng": rng_states(),
    }


def restore(run, ckpt: dict) -> None:
    """Put the run's objects and the RNGs back as `capture` found them."""
    engine = run.engine
    engine.net.load_state_dict(ckpt["model"])
    engine.fc.load_state_dict(ckpt["classifier"])
    engine.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["isda"] is not None:  # None: a plain-CE checkpoint from before the loss group
        engine.criterion.load_state_dict(ckpt["isda"])
    engine.scaler.load_state_dict(ckpt["scaler"])
    set_rng_states(ckpt["rng"])


def rng_states() -> dict:
    """Every RNG state as tensors and plain values, so a checkpoint loads with weights_only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": [version, list(internal), python_gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, python_gauss = states["python"]
    random.setstate((version, tuple(internal), python_gauss))
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
