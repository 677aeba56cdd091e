"""summary.json: what a finished run reports (the paper's number and what it was measured on)."""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from ..losses import loss_name
from ..parallel import distributed
from ..parallel.device import device_name
from ..rundir.identity import isda_variant, summary_fields


def summarise(cfg: DictConfig, run, history: list[dict], wall: float) -> dict:
    """The paper's number (mean test error of the last 10 epochs) with the run's identity."""
    errors = [r["test_error"] for r in history]
    top5 = {"test_error_top5_final": history[-1]["test_error_top5"]} \
        if "test_error_top5" in history[-1] else {}  # image folders (Table 4)
    bad = sorted({f for r in history for f in r.get("bad_files", [])})  # image folders' bad files
    return {**top5, **({"bad_files": bad} if bad else {}), **summary_fields(cfg, distributed.world()),  # the run's label and science, computed once
        "test_error_last10": float(np.mean(errors[-10:])), "test_error_final": errors[-1],
        "test_error_best": min(errors), "epochs": run.epochs,
        "recipe_epochs": int(cfg.model.recipe.epochs), "batch_size": run.batch_size,
        "seed": run.seed, "dataset": cfg.dataset.name, "model": cfg.model.name,
        "aug": cfg.aug.name, "method": cfg.loss.name if cfg.isda.loss is None else "isda",
        "variant": isda_variant(cfg.isda),
        "loss": loss_name(cfg.loss._target_),
        "drop_rate": float(cfg.model.net.get("drop_rate") or 0.0),
        "lambda_0": float(cfg.isda.lambda_0), "train_size": run.train.num_images,
        "test_size": run.eval.num_images, "eval_split": run.eval.split,
        "precision": cfg.trainer.precision,
        "threads": torch.get_num_threads(), "world_size": distributed.world(),
        "sync_bn": bool(cfg.trainer.get("sync_bn")) and distributed.world() > 1,
        "wall_time": wall, "torch_version": torch.__version__, "device": device_name(run.device),
    }

