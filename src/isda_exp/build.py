"""Config -> objects. Every `_target_` in the configs is instantiated here, through `build`."""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .data import Arrays
from .errors import UserError
from .identity import science_config  # noqa: F401  (moved to identity; trainer.py imports it here)
from .losses import PLAIN_CE, loss_name
from .schedule import lr_factor, scaled_milestones


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate with the errors of a bad choice turned into one readable line."""
    try:
        return instantiate(node, **kwargs)
    except UserError:
        raise
    except Exception as e:  # hydra wraps the constructor's error; keep the innermost message
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"cannot build {node.get('_target_')}: {cause}") from None


def build_data(cfg: DictConfig) -> Arrays:
    return build(cfg.dataset)


def build_model(cfg: DictConfig, num_classes: int) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """The feature extractor from the zoo and its separate linear classifier."""
    net = build(cfg.model.net, num_classes=num_classes)
    return net, torch.nn.Linear(net.feature_dim, num_classes)


def build_criterion(cfg: DictConfig, feature_dim: int, num_classes: int):
    """ISDALoss for isda=on and its variants, else the loss group's choice (loss=ce: plain CE).

    Every criterion is called as `loss, logits = criterion(features, fc, targets, ratio,
    epoch=e, step=s)` (see isda_exp.losses).
    """
    check_loss(cfg)
    if cfg.isda.loss is not None:
        return build(cfg.isda.loss, feature_dim=feature_dim, num_classes=num_classes)
    node = OmegaConf.to_container(cfg.loss, resolve=True)
    node.pop("name", None)  # the method label, not a constructor argument
    return build(OmegaConf.create(node), feature_dim=feature_dim, num_classes=num_classes)


def check_loss(cfg: DictConfig) -> None:
    """ISDA is its own loss: refuse it together with another loss, before any work."""
    target = cfg.loss.get("_target_")
    if cfg.isda.loss is not None and target != PLAIN_CE:
        name = loss_name(target)
        raise UserError(f"ISDA ({cfg.isda.name}) is its own loss and cannot be combined with loss={name}; "
                        f"use isda=off loss={name}, or keep ISDA with loss=ce")


def run_length(cfg: DictConfig) -> tuple[int, int]:
    """(epochs, batch size): the trainer's overrides, else the model's recipe."""
    recipe = cfg.model.recipe
    epochs = int(recipe.epochs if cfg.trainer.epochs is None else cfg.trainer.epochs)  # 0 is an error
    batch_size = int(recipe.batch_size if cfg.trainer.batch_size is None else cfg.trainer.batch_size)
    if epochs < 1 or batch_size < 1:
        raise UserError(f"trainer.epochs={epochs} and trainer.batch_size={batch_size} must be >= 1")
    return epochs, batch_size


def build_optimizer(cfg: DictConfig, params, epochs: int):
    """SGD (Nesterov, weight decay on all parameters) and its per-epoch LR schedule."""
    r = cfg.model.recipe
    opt = torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov,
                          weight_decay=r.weight_decay)
    milestones = scaled_milestones(r.get("milestones") or [], int(r.epochs), epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: lr_factor(e, epochs, r.schedule, milestones, r.get("gamma") or 1.0))
    return opt, schedule
