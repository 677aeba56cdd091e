"""scripts/bench_train.py: its default path (generated images) runs to the end on the CPU; the timed
steps are the recipe's second epoch, in training mode; a non-finite loss is reported, not fatal."""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench_train  # noqa: E402

from isda_exp.training import Diverged  # noqa: E402

TINY = ["model=resnet32", "isda=on", "device=cpu", "dataset=synthetic", "dataset.train_size=64",
        "dataset.test_size=32", "trainer.batch_size=32", "trainer.threads=1", "+model.net.base_width=4"]
BENCH = [sys.executable, str(ROOT / "scripts" / "bench_train.py")]


def tiny_trainer(*extra: str):
    with tempfile.TemporaryDirectory() as tmp:
        return bench_train.build_trainer([*TINY, *extra], Path(tmp))


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"overhead_steps": 2, "repeats": 1, "rounds": 1, **kw})


def test_the_timed_lambda_is_the_recipe_second_epoch_value():
    recipe = OmegaConf.load(ROOT / "configs" / "model" / "resnet32.yaml").recipe
    isda = OmegaConf.load(ROOT / "configs" / "isda" / "on.yaml")
    trainer = tiny_trainer()
    assert bench_train.bench_lambda(trainer) == pytest.approx(isda.lambda_0 / recipe.epochs)  # 0.5/160
    assert trainer.run.epochs == recipe.epochs  # no epochs override: the recipe's schedule and lr


def test_a_non_finite_loss_stops_a_run_but_not_a_benchmark():
    trainer = tiny_trainer()
    with torch.no_grad():
        trainer.engine.fc.weight[0, 0] = float("nan")
    with pytest.raises(Diverged):
        trainer.train_epoch(1)
    trainer.stop_on_nonfinite = False
    assert math.isnan(trainer.train_epoch(1)["train_loss"])  # the epoch ran to its end

    row = bench_train.measure_trainer(tiny_trainer(), args())
    assert row["nonfinite"] == [] and row["lambda"] > 0
    poisoned = tiny_trainer()
    with torch.no_grad():
        poisoned.engine.fc.weight[0, 0] = float("nan")
    row = bench_train.measure_trainer(poisoned, args())
    assert row["nonfinite"] == ["timed epoch 1", "4 of 4 CE/ISDA round steps"]
    assert math.isfinite(row["train_img_s"]) and row["train_img_s"] > 0  # the time stands


def test_ce_and_isda_rounds_train_with_batch_statistics_after_a_test_pass():
    trainer = tiny_trainer()
    trainer.evaluate()  # leaves the network in eval mode
    modes = []
    handle = trainer.engine.net.register_forward_pre_hook(lambda m, _: modes.append(m.training))
    batches = [b for _, b in zip(range(2), trainer.stream.epoch(1))]
    bench_train.isda_overhead(trainer, batches, 1, [])
    handle.remove()
    assert modes and all(modes)


def test_the_default_path_runs_in_miniature_and_writes_its_figures(tmp_path):
    """No --npz: the generated images (what gpu_check's bench step runs on the GPU)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([*BENCH, "--settings", "fp32", "--steps", "2", "--batch-size", "32",
                           "--test-size", "32", "--repeats", "1", "--rounds", "1", "--overhead-steps", "1",
                           "--set", "+model.net.base_width=4", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "resnet32" and row["setting"] == "fp32" and row["nonfinite"] == []
    assert row["train_img_s"] > 0 and row["test_img_s"] > 0 and row["lambda"] == 0.5 / 160


@pytest.mark.slow
def test_full_resnet32_at_batch_128_finishes_on_generated_images(tmp_path):
    """The command that once died with 'Diverged ... (train loss nan)': full ResNet-32, batch 128,
    a second CE and ISDA round after a test pass (where BatchNorm in eval mode had blown up)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([*BENCH, "--settings", "fp32", "--steps", "6", "--repeats", "1", "--rounds", "2",
                           "--test-size", "512", "--json", str(out)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["nonfinite"] == [] and row["train_img_s"] > 0
