#!/usr/bin/env python
"""ISDA in a PyTorch Lightning loop: a LightningModule with a timm backbone, its own classifier and
isda_exp.compat.ISDALoss (the authors' call). Runs as it is on generated data:

    pip install pytorch-lightning timm        # or: pip install -e ".[examples]"
    python examples/lightning_isda.py --epochs 2 --arch resnet10t

Put your own DataLoaders in place of `synthetic_loaders` (images normalised as the backbone
expects: timm.data.resolve_data_config({}, model=backbone)). Several GPUs: Trainer(strategy="ddp")
works as it is: the loss gathers the global batch for its statistics, so every rank holds the same
ones; DDP also broadcasts rank 0's buffers (the statistics among them) at each forward, which then
changes nothing but costs C x A x A numbers a step: DDPStrategy(broadcast_buffers=False) skips it
(BatchNorm's running statistics then stay per rank, which is how the authors trained).
"""
from __future__ import annotations

import argparse

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from torch import nn

from isda_exp import isda_ratio
from isda_exp.compat import ISDALoss


class ISDAClassifier(pl.LightningModule):
    """A timm backbone (pooled features), a Linear classifier and the ISDA loss."""

    def __init__(self, arch: str = "resnet18", num_classes: int = 10, lambda_0: float = 0.5,
                 lr: float = 0.05, covariance: str = "full", pretrained: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = timm.create_model(arch, pretrained=pretrained, num_classes=0)
        self.fc = nn.Linear(self.backbone.num_features, num_classes)
        # its statistics are buffers: they are saved in Lightning's checkpoints and resumed
        self.criterion = ISDALoss(self.backbone.num_features, num_classes, covariance)

    def training_step(self, batch, batch_idx):
        x, y = batch
        # lambda = lambda_0 * epoch / epochs, fixed within an epoch (plain CE in the first)
        ratio = isda_ratio(self.hparams.lambda_0, self.current_epoch, self.trainer.max_epochs)
        loss, logits = self.criterion(self.backbone, self.fc, x, y, ratio)
        self.log_dict({"train_loss": loss, "isda_lambda": ratio,
                       "train_error": (logits.argmax(1) != y).float().mean() * 100}, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.fc(self.backbone(x))  # accuracy on the plain logits, as the paper measures
        self.log_dict({"val_loss": F.cross_entropy(logits, y),
                       "val_error": (logits.argmax(1) != y).float().mean() * 100}, on_epoch=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, nesterov=True,
                              weight_decay=1e-4)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.trainer.max_epochs)]


def synthetic_loaders(num_classes: int = 4, size: int = 32, train: int = 64, val: int = 32):
    """Learnable stand-in images (a class-specific colour plus noise), for the demo and the test."""
    gen = torch.Generator().manual_seed(0)

    def split(n):
        y = torch.arange(n) % num_classes
        colour = torch.linspace(-1, 1, num_classes)[y].view(n, 1, 1, 1)
        x = colour + 0.5 * torch.randn(n, 3, size, size, generator=gen)
        return torch.utils.data.TensorDataset(x, y)
    return (torch.utils.data.DataLoader(split(train), batch_size=16, shuffle=True, generator=gen),
            torch.utils.data.DataLoader(split(val), batch_size=16))


def main(argv=None) -> ISDAClassifier:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--classes", type=int, default=4)
    args = p.parse_args(argv)
    model = ISDAClassifier(args.arch, args.classes)
    train, val = synthetic_loaders(args.classes)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, train, val)
    print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})
    return model


if __name__ == "__main__":
    main()
