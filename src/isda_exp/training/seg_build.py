"""Config -> objects of a segmentation run (dataset.task=segmentation): the data source and its
streams, the network, per-pixel ISDA of each head, SGD and the step engine, as one SegRunObjects.

The recipe (model.recipe: iterations, batch_size, lr, momentum, weight_decay, power, aux_weight)
is the authors' Cityscapes command; trainer.iterations / trainer.batch_size override it as
trainer.epochs / batch_size do for classification.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from ..data.streams import resolve_workers
from ..errors import UserError
from ..losses import PLAIN_CE, PixelISDA, SegmentationLoss, loss_name
from ..parallel import distributed
from ..parallel.sync_batchnorm import sync_batchnorm
from .build import build, resolve_auto, start_run
from .seg_engine import SegEngine
from .validate import check_config



@dataclass
class SegRunObjects:
    device: torch.device
    iterations: int
    batch_size: int
    seed: int
    data: object  # isda_exp.data.segmentation.SegmentationSource
    train: object
    eval: object
    engine: SegEngine
    lambda_0: float | None  # None without ISDA
    constant: bool


def seg_length(cfg: DictConfig) -> tuple[int, int]:
    """(iterations, global batch size): the trainer's overrides, else the model's recipe."""
    t, r = cfg.trainer, cfg.model.recipe
    iterations = int(r.iterations if t.get("iterations") is None else t.iterations)
    batch_size = int(r.batch_size if t.batch_size is None else t.batch_size)
    return iterations, batch_size


def check_seg_buildable(cfg: DictConfig) -> None:
    """What a segmentation run refuses before any work: another loss, a CIFAR augmentation, a
    classification model, a per-rank batch of one image without synchronised BatchNorm."""
    if cfg.loss.get("_target_") != PLAIN_CE:
        raise UserError(f"segmentation trains with cross-entropy (and ISDA): loss="
                        f"{loss_name(cfg.loss._target_)} is not available; use loss=ce")
    if cfg.aug.name != "baseline":
        raise UserError(f"aug={cfg.aug.name} is a CIFAR augmentation: a segmentation data set has "
                        "its own (dataset.train_scales, crop_size, flip); use aug=baseline")
    if "iterations" not in cfg.model.get("recipe", {}):
        raise UserError(f"model={cfg.model.name} is a classification model: a segmentation data set "
                        "trains deeplabv3_* or pspnet_* (e.g. model=deeplabv3_resnet101)")
    if cfg.model.recipe.get("schedule", "poly") != "poly":
        raise UserError(f"model.recipe.schedule={cfg.model.recipe.schedule}: segmentation runs use "
                        "the authors' poly schedule (model.recipe.power); use schedule=poly")
    _, batch = seg_length(cfg)
    world = distributed.world()
    distributed.check_split(batch, batch * world, world)
    if batch // world < 2 and not (cfg.trainer.get("sync_bn") and world > 1):
        raise UserError(f"trainer.batch_size={batch} leaves {batch // world} image per rank: BatchNorm "
                        "needs 2 or more (or trainer.sync_bn=true under DDP)")


def build_seg_run(cfg: DictConfig) -> SegRunObjects:
    """Check, then build in a fixed order (the initial weights come from the seeded RNG)."""
    check_config(cfg)
    resolve_auto(cfg)
    check_seg_buildable(cfg)
    t = cfg.trainer
    device, seed = start_run(cfg)
    iterations, batch_size = seg_length(cfg)
    data = build(cfg.dataset)
    net = build(cfg.model.net, num_classes=data.num_classes)
    if t.get("sync_bn") and distributed.world() > 1:
        net = sync_batchnorm(net, device)
    criterion = build_seg_criterion(cfg, net)
    net.to(device)
    criterion.to(device)
    r = cfg.model.recipe
    optimizer = torch.optim.SGD(net.parameters(), lr=r.lr, momentum=r.momentum,
                                nesterov=bool(r.get("nesterov")), weight_decay=r.weight_decay)
    engine = SegEngine(net, criterion, optimizer, device, t.precision, (data.mean, data.std),
                       bool(t.channels_last))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark)
    rank, world, workers = distributed.rank(), distributed.world(), resolve_workers(t.num_workers)
    train = data.train_stream(batch_size, seed, iterations, device, workers, rank, world)
    evaluation = data.eval_stream(device, workers, rank, world)
    isda = cfg.isda
    return SegRunObjects(device, iterations, batch_size, seed, data, train, evaluation, engine,
                         None if isda.loss is None else float(isda.lambda_0), bool(isda.get("constant")))


def build_seg_criterion(cfg: DictConfig, net) -> SegmentationLoss:
    """main + aux_weight x auxiliary cross-entropy, each head with its own PixelISDA under ISDA."""
    weights = (1.0, float(cfg.model.recipe.aux_weight))
    if cfg.isda.loss is None:
        return SegmentationLoss(weights)
    covariance = str(cfg.isda.loss.get("covariance") or "full")
    statistics = str(cfg.trainer.get("isda_statistics") or "global")
    return SegmentationLoss(weights, [PixelISDA(dim, net.num_classes, covariance, statistics)
                                      for dim in net.feature_dims])


def poly_lr(base: float, iteration: int, total: int, power: float) -> float:
    """The authors' lr at 1-based iteration i: base * (1 - (i - 1) / total) ** power."""
    return base * (1 - (iteration - 1) / total) ** power


def seg_ratio(lambda_0: float | None, iteration: int, total: int, constant: bool = False) -> float:
    """lambda at 1-based iteration i: lambda_0 * i / total (lambda_0 when constant; 0 without ISDA)."""
    if lambda_0 is None:
        return 0.0
    return lambda_0 if constant else lambda_0 * iteration / total
