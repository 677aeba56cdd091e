"""The run's data, model and criterion from its config: the one place explain calls isda_exp.training.build.

Kept apart so the builders can be re-pointed in one spot when build.py changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.streams import resolve_workers
from ..errors import UserError
from ..training.build import build_criterion, build_data, build_model
from .source import ExplainData, explain_data


@dataclass
class Rebuilt:
    data: ExplainData
    net: torch.nn.Module
    fc: torch.nn.Linear
    criterion: torch.nn.Module  # ISDALoss for ISDA runs (its statistics loaded), else the run's loss


def rebuild(cfg, checkpoint: dict) -> Rebuilt:
    """Build the run's objects and load the checkpoint's weights into them (eval mode, CPU).
    An image folder's files are decoded by as many workers as the run trained with."""
    source = build_data(cfg)
    data = explain_data(source, resolve_workers(cfg.trainer.get("num_workers", 0)))
    net, fc = build_model(cfg, data.num_classes, pretrained=False)  # the checkpoint's weights
    criterion = build_criterion(cfg, net.feature_dim, data.num_classes)
    try:
        net.load_state_dict(checkpoint["model"])
        fc.load_state_dict(checkpoint["classifier"])
        if checkpoint.get("isda") is not None:
            criterion.load_state_dict(checkpoint["isda"])
    except RuntimeError as e:  # shapes or keys differ: the config is not the checkpoint's
        first = str(e).strip().splitlines()[0][:200]
        raise UserError(f"the checkpoint does not fit the model its run config builds ({first}); "
                        "was .hydra/config.yaml or a --set override changed?") from None
    for module in (net, fc, criterion):
        module.eval()
    return Rebuilt(data, net, fc, criterion)
