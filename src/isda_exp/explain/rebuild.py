"""The run's data, model and criterion from its config: the one place explain calls isda_exp.build.

Kept apart so the builders can be re-pointed in one spot when build.py changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from isda_exp.build import build_criterion, build_data, build_model
from isda_exp.data import Arrays
from isda_exp.errors import UserError


@dataclass
class Rebuilt:
    data: Arrays
    net: torch.nn.Module
    fc: torch.nn.Linear
    criterion: torch.nn.Module  # ISDALoss for ISDA runs (its statistics loaded), else the run's loss


def rebuild(cfg, checkpoint: dict) -> Rebuilt:
    """Build the run's objects and load the checkpoint's weights into them (eval mode, CPU)."""
    data = build_data(cfg)
    if not isinstance(data, Arrays):  # image folders stream from disk: not held as arrays
        raise UserError(f"explain works on data sets held in memory (CIFAR, synthetic) for now; "
                        f"dataset={cfg.dataset.name} streams image files, which it cannot read yet")
    net, fc = build_model(cfg, data.num_classes)
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
