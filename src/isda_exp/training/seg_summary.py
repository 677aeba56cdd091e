"""summary.json of a segmentation run: the final mIoU (single scale, and multi-scale / + flip when
evaluated), per-class IoU and what the run was measured on, with its label and science config."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from ..parallel import distributed
from ..parallel.device import device_name
from ..rundir.identity import isda_variant, summary_fields

TASK = "segmentation"


def seg_summary(cfg: DictConfig, run, final: dict, wall: float) -> dict:
    """Table 7's numbers of the run (miou, miou_ms, miou_msf: % on the evaluation split)."""
    scores = {k: v for k, v in final.items() if k.startswith(("miou", "iou", "pixel_acc"))}
    return {"task": TASK, **summary_fields(cfg, distributed.world()), **scores,
            "iterations": run.iterations, "recipe_iterations": int(cfg.model.recipe.iterations),
            "batch_size": run.batch_size, "seed": run.seed, "dataset": cfg.dataset.name,
            "model": cfg.model.name, "aug": cfg.aug.name,
            "method": cfg.loss.name if cfg.isda.loss is None else "isda", "variant": isda_variant(cfg.isda),
            "lambda_0": float(cfg.isda.lambda_0), "isda_statistics": str(cfg.trainer.isda_statistics),
            "train_size": run.data.num_train, "test_size": run.eval.num_images,
            "eval_split": run.eval.split, "evaluation": {**run.data.evaluation,
                                                         "scales": list(run.data.evaluation["scales"])},
            "precision": cfg.trainer.precision, "threads": torch.get_num_threads(),
            "world_size": distributed.world(),
            "sync_bn": bool(cfg.trainer.get("sync_bn")) and distributed.world() > 1,
            "wall_time": wall, "torch_version": torch.__version__, "device": device_name(run.device)}
