"""The PyTorch Lightning example (examples/lightning_isda.py): a LightningModule with a timm backbone
and isda_exp.compat.ISDALoss trains for 2 epochs; the loss saw every training image once per epoch
(its statistics count them), used lambda = lambda_0 * epoch / epochs, and keeps its statistics as
the module's buffers (in Lightning's checkpoints)."""
from __future__ import annotations

import importlib.util

import pytest

from conftest import ROOT

pl = pytest.importorskip("pytorch_lightning", reason="the examples extra: pip install -e '.[examples]'")


def test_the_lightning_example_trains_two_epochs_with_isda():
    spec = importlib.util.spec_from_file_location("lightning_isda", ROOT / "examples" / "lightning_isda.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model = example.main(["--epochs", "2", "--arch", "resnet10t", "--classes", "4"])
    metrics = model.trainer.callback_metrics
    assert model.trainer.current_epoch == 2
    counts = model.criterion.counts
    assert counts.tolist() == [2 * 16] * 4  # 64 images, 4 balanced classes, 2 epochs
    assert float(metrics["isda_lambda_epoch"]) == pytest.approx(0.5 * 1 / 2)  # epoch 1 of 2
    assert model.criterion.covariances.abs().sum() > 0
    assert "criterion.covariances" in model.state_dict()  # in Lightning's checkpoints
    for key in ("train_loss_epoch", "val_error"):
        assert key in metrics and float(metrics[key]) == float(metrics[key])  # finite, logged
