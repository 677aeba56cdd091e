"""Config -> objects: the one place a run's config becomes the objects it trains with.

Every `_target_` in the configs is instantiated here, through `build`; `build_run` returns all of
a run's objects as one `RunObjects`, which the loop (isda_exp.training.trainer) receives whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..data.streams import DataSource, EvalStream, TrainStream, resolve_workers
from ..errors import UserError
from ..losses import PLAIN_CE, isda_ratio, loss_name
from ..models.pretrained import load_pretrained
from ..parallel import distributed
from ..parallel.device import resolve_device, resolve_precision
from ..parallel.sync_batchnorm import sync_batchnorm
from ..seeding import init_seed
from . import weights
from .engine import Engine
from .schedule import lr_factor, scaled_milestones
from .validate import check_config


@dataclass
class RunObjects:
    """A run's objects: what the loop trains (engine), on what (streams), for how long, how."""

    device: torch.device
    epochs: int
    batch_size: int
    seed: int
    data: DataSource
    train: TrainStream
    eval: EvalStream
    engine: Engine
    scheduler: torch.optim.lr_scheduler.LRScheduler
    isda_lambda: Callable[[int], float]  # an epoch's ISDA strength (0 for the other losses)
    eval_batch_size: int


def build_run(cfg: DictConfig) -> RunObjects:
    """Check the config, then build the run's objects in a fixed order (the order draws the
    initial weights from the seeded RNG, so it is part of the results)."""
    check_config(cfg)
    check_loss(cfg)
    resolve_auto(cfg)
    t = cfg.trainer
    device, seed = start_run(cfg)
    epochs, batch_size = run_length(cfg)
    data = build_data(cfg)
    distributed.check_split(batch_size, data.num_train, distributed.world())
    net, fc = build_model(cfg, data.num_classes)
    if t.get("sync_bn") and distributed.world() > 1:  # else per-rank BN, as the authors ran
        net = sync_batchnorm(net, device)
    criterion = build_criterion(cfg, net.feature_dim, data.num_classes)
    for module in (net, fc, criterion):
        module.to(device)
    optimizer, scheduler = build_optimizer(cfg, (list(net.parameters()), list(fc.parameters())),
                                           epochs, batch_size)
    norm = (data.mean, data.std) if hasattr(data, "mean") else None  # image folders: their own
    engine = Engine(net, fc, criterion, optimizer, device, t.precision, bool(t.channels_last),
                    bool(t.compile), norm)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark)
    rank, world = distributed.rank(), distributed.world()
    train = data.train_stream(build(cfg.aug), batch_size, seed, device, resolve_workers(t.num_workers),
                              rank, world)
    return RunObjects(device, epochs, batch_size, seed, data, train, data.eval_stream(device, rank, world),
               engine, scheduler, isda_lambda(cfg, epochs), int(t.eval_batch_size))


def start_run(cfg: DictConfig) -> tuple[torch.device, int]:
    """The first steps of building any run (classification or segmentation): torch's threads,
    the device, and the seeded RNG the initial weights are drawn from; returns (device, seed)."""
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    device = resolve_device(str(cfg.device))
    seed = int(cfg.seed)
    torch.manual_seed(init_seed(seed))
    return device, seed


def resolve_auto(cfg: DictConfig) -> None:
    """trainer.precision=auto becomes, in the config itself, the precision the run trains with:
    bf16 where the device computes it natively (CUDA, CPUs with AVX512-BF16 or AMX), else fp32.
    The science config and the summary then hold the precision actually used, so an auto run
    and an explicit run of the same precision are the same run."""
    if cfg.trainer.precision == "auto":
        cfg.trainer.precision = resolve_precision("auto", resolve_device(str(cfg.device)))
    weights.resolve_pretrained(cfg, lambda: build(cfg.model.net))  # its file hash or weights name
    weights.resolve_inputs(cfg, lambda: build(cfg.model.net))  # a folder's transforms at auto


def isda_lambda(cfg: DictConfig, epochs: int) -> Callable[[int], float]:
    """lambda_0 * epoch / epochs (or constant) for ISDA; the other losses take no lambda."""
    isda = cfg.isda
    if isda.loss is None:
        return lambda epoch: 0.0
    lambda_0, constant = float(isda.lambda_0), bool(isda.constant)
    return lambda epoch: isda_ratio(lambda_0, epoch, epochs, constant=constant)


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


def build_data(cfg: DictConfig) -> DataSource:
    weights.resolve_inputs(cfg, lambda: build(cfg.model.net))  # a folder's transforms at auto
    return build(cfg.dataset)


def build_model(cfg: DictConfig, num_classes: int,
                pretrained: bool = True) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """The feature extractor from the zoo and its separate linear classifier, with the weights of
    model.pretrained when set (pretrained=False: a checkpoint's weights come next)."""
    net = build(cfg.model.net)
    fc = torch.nn.Linear(net.feature_dim, num_classes)
    if pretrained and cfg.model.get("pretrained"):
        load_pretrained(net, fc, str(cfg.model.pretrained))
    return net, fc


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
    recipe = cfg.model.recipe  # values checked by validate.check_config
    epochs = int(recipe.epochs if cfg.trainer.epochs is None else cfg.trainer.epochs)
    batch_size = int(recipe.batch_size if cfg.trainer.batch_size is None else cfg.trainer.batch_size)
    return epochs, batch_size


def build_optimizer(cfg: DictConfig, params, epochs: int, batch_size: int | None = None):
    """SGD (Nesterov, weight decay on all parameters) and its per-epoch LR schedule. `params`: a
    list, or (backbone, classifier) lists for model.recipe.backbone_lr_mult (param_groups).

    A recipe with `lr_batch` (ImageNet: 512) scales its lr linearly with the total batch:
    lr = recipe.lr * batch_size / lr_batch (Goyal et al.); without it the lr is used as given.
    """
    r = cfg.model.recipe
    lr = r.lr
    if r.get("lr_batch") and batch_size is not None:
        lr = r.lr * batch_size / r.lr_batch
    if isinstance(params, tuple):  # (backbone, classifier): the fine-tuning multiplier
        params = param_groups(*params, lr, r.get("backbone_lr_mult"))
    opt = torch.optim.SGD(params, lr=lr, momentum=r.momentum, nesterov=r.nesterov,
                          weight_decay=r.weight_decay)
    milestones = scaled_milestones(r.get("milestones") or [], int(r.epochs), epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: lr_factor(e, epochs, r.schedule, milestones, r.get("gamma") or 1.0))
    return opt, schedule


def param_groups(backbone: list, classifier: list, lr: float, mult) -> list:
    """One group of every parameter, backbone first (as every recipe trained before), or with
    model.recipe.backbone_lr_mult != 1 the classifier at lr then the backbone at lr x mult (the
    classifier first, so the metrics' lr is the recipe's); the schedule scales both alike."""
    if mult is None or float(mult) == 1.0:
        return [*backbone, *classifier]
    return [{"params": classifier}, {"params": backbone, "lr": lr * float(mult)}]


def check_buildable(cfg: DictConfig) -> None:
    """The choices that only building can judge (the loss pairing, the augmentation), before any
    file of the run is written: cheap, no data or model is built."""
    check_loss(cfg)
    build(cfg.aug)
