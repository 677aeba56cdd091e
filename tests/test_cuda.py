"""What only a CUDA GPU can show (marked `cuda`, skipped cleanly elsewhere; scripts/gpu_check.sh
runs them): a training step per precision is finite, the ISDA statistics kept on the GPU equal a
float64 CPU computation, the test pass error count matches the CPU's."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from isda_exp.losses import ISDALoss
from isda_exp.paths import config_dir

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def trainer(tmp_path: Path, *overrides: str):
    from isda_exp.training.trainer import Trainer

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=synthetic", "dataset.train_size=512",
                                          "dataset.test_size=256", "trainer.batch_size=128",
                                          "trainer.progress=false", "trainer.tensorboard=false",
                                          *overrides])  # the recipe's epochs: epoch 2 at its lambda
    return Trainer(cfg, tmp_path)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_an_isda_epoch_on_the_gpu_is_finite(tmp_path, precision):
    t = trainer(tmp_path, "device=cuda", f"trainer.precision={precision}", "trainer.channels_last=true")
    row = {**t.train_epoch(1), **t.evaluate()}
    assert row["lambda"] > 0
    assert all(math.isfinite(v) for v in row.values()), row
    assert int(t.engine.criterion.counts.sum()) == 512


def test_isda_statistics_on_the_gpu_equal_float64_on_the_cpu():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 256, 64, generator=gen, dtype=torch.float64) * 3 + 1
    labels = torch.randint(0, 100, (6, 256), generator=gen)
    gpu, cpu = ISDALoss(64, 100).cuda(), ISDALoss(64, 100).double()
    for x, y in zip(feats, labels):
        gpu.update_statistics(x.float().cuda(), y.cuda())
        cpu.update_statistics(x, y)
    for key, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[key].cpu().to(value.dtype), value,
                                   rtol=1e-4, atol=1e-4)


def test_the_test_pass_counts_the_same_errors_on_gpu_and_cpu(tmp_path):
    gpu = trainer(tmp_path / "g", "device=cuda")
    cpu = trainer(tmp_path / "c", "device=cpu")
    cpu.engine.net.load_state_dict(gpu.engine.net.state_dict())
    cpu.engine.fc.load_state_dict(gpu.engine.fc.state_dict())
    a, b = gpu.evaluate(), cpu.evaluate()
    # logits differ by float rounding: at most a couple of near-ties may flip
    assert abs(a["test_error"] - b["test_error"]) * 256 / 100 <= 2
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-3)
