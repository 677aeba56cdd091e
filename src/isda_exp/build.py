"""Config -> objects. Every `_target_` in the configs is instantiated here, through `build`."""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .data import Arrays
from .errors import UserError
from .losses import PLAIN_CE, loss_name
from .paper import RECIPE_DROPOUT
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
    epochs = int(cfg.trainer.epochs or recipe.epochs)
    batch_size = int(cfg.trainer.batch_size or recipe.batch_size)
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


def science_config(cfg: DictConfig) -> dict:
    """The parts of a config that change results: a resumed run must match them."""
    c = OmegaConf.to_container(cfg, resolve=True)
    trainer = c.get("trainer", {})
    keep = {k: trainer.get(k) for k in ("epochs", "batch_size", "precision")}
    science = {"seed": c["seed"], "model": c["model"],
               "dataset": _without(c["dataset"], ("root", "download", "npz")),
               "aug": c["aug"], "isda": c["isda"], "trainer": keep, "loss": c.get("loss")}
    return _as_stored_before(science)


def _as_stored_before(science: dict) -> dict:
    """Keys added later (the loss group, ResNet dropout) are left out at their defaults, so the
    science config of a run started before them is unchanged and that run still resumes."""
    if (science.get("loss") or {}).get("_target_") == PLAIN_CE:
        science.pop("loss")
    net = science["model"].get("net", {})
    if "drop_rate" in net and not net["drop_rate"] and science["model"].get("name") not in RECIPE_DROPOUT:
        science["model"] = {**science["model"], "net": _without(net, ("drop_rate",))}
    return science


def _without(d: dict, keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}
