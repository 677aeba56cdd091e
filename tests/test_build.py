"""Config -> objects -> loop: the run's objects come from one place, the loop knows only the
stream interface, the augmentation is built from its config node, and the named random streams
keep their numbers."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import run_cli
from isda_exp import seeding
from isda_exp.data.cifar_augment import BatchAugment, build_augment
from isda_exp.errors import UserError
from isda_exp.parallel.device import resolve_device
from isda_exp.paths import config_dir
from isda_exp.training.build import RunObjects, build_run
from isda_exp.training.trainer import Trainer

TINY = ["dataset=synthetic", "dataset.train_size=96", "dataset.test_size=40", "trainer.batch_size=32",
        "trainer.epochs=2", "trainer.progress=false", "trainer.tensorboard=false", "device=cpu",
        "trainer.threads=1", "+model.net.base_width=4"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# ------------------------------------------------------------------ the run's objects


def test_build_run_holds_what_the_config_says():
    run = build_run(composed("isda=on", "aug=cutout", "aug.cutout_length=8", "trainer.epochs=4"))
    assert isinstance(run, RunObjects)
    assert (run.epochs, run.batch_size, run.seed, run.device.type) == (4, 32, 0, "cpu")
    assert len(run.train) == 3 and run.train.num_images == 96
    assert run.eval.num_images == 40 and run.eval.split == "test"
    assert isinstance(run.train.augment, BatchAugment) and run.train.augment.cutout_length == 8
    assert [run.isda_lambda(e) for e in range(4)] == [0.0, 0.125, 0.25, 0.375]  # lambda_0 e / E
    assert run.engine.fc.out_features == 10 and run.engine.fc.in_features == run.engine.net.feature_dim
    off = build_run(composed("isda=off"))
    assert off.isda_lambda(3 if off.epochs > 3 else 1) == 0.0


class ReplayedTrain:
    """Another TrainStream implementation: batches recorded beforehand, served from a list."""

    def __init__(self, batches: dict[int, list], num_images: int):
        self.batches, self.num_images = batches, num_images

    def __len__(self):
        return len(self.batches[0])

    def epoch(self, epoch: int, start_batch: int = 0):
        yield from self.batches[epoch][start_batch:]


class ListEval:
    """Another EvalStream implementation: whole-set batches from a Python list."""

    def __init__(self, x, y):
        self.x, self.y, self.num_images, self.split = x, y, len(y), "test"

    def batches(self, batch_size: int):
        for i in range(0, len(self.y), batch_size):
            yield self.x[i:i + batch_size], self.y[i:i + batch_size]


def test_the_loop_trains_any_stream_implementation_the_same(tmp_path):
    """The loop sees only the interface: streams of another class serving the same batches give
    exactly the metrics of the in-memory streams."""
    Trainer(composed("isda=on"), tmp_path / "memory").fit()
    run = build_run(composed("isda=on"))
    recorded = {e: [(x.clone(), y.clone()) for x, y in run.train.epoch(e)] for e in range(2)}
    data = run.data
    other = dataclasses.replace(run, train=ReplayedTrain(recorded, run.train.num_images),
                                eval=ListEval(data.x_test.clone(), data.y_test.clone()))
    Trainer(composed("isda=on"), tmp_path / "replayed", run=other).fit()
    assert metrics(tmp_path / "replayed") == metrics(tmp_path / "memory")


# ------------------------------------------------------------------ augmentation from its config


def test_the_augmentation_is_built_from_its_config_node():
    from isda_exp.training.build import build

    assert build(composed("aug=cutout").aug).cutout_length == 16
    assert build(composed("aug=baseline").aug).cutout_length == 0
    factory = build(composed("aug=autoaugment", "aug.cutout_length=12").aug)
    assert factory.keywords == {"cutout_length": 12}
    with pytest.raises(UserError, match=r"aug.name=nonsense is unknown: use aug=baseline"):
        build(composed("aug.name=nonsense").aug)
    with pytest.raises(UserError, match=r"aug=cutout with aug.cutout_length=0 would train without a hole"):
        build_augment("cutout", 0)


@pytest.mark.parametrize("overrides, message", [
    (["aug.name=nonsense"], "aug.name=nonsense is unknown"),
    (["aug=cutout", "aug.cutout_length=0"], "aug=cutout with aug.cutout_length=0 would train without a hole"),
])
def test_an_impossible_augmentation_is_one_line_and_exit_2(tmp_path, overrides, message):
    proc = run_cli(*TINY, *overrides, f"out_root={tmp_path}", cwd=tmp_path, check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not list(tmp_path.rglob("last.pt")) and not list(tmp_path.rglob("metrics.jsonl"))


# ------------------------------------------------------------------ named streams, one device resolver


def test_the_named_streams_keep_their_numbers():
    """The stream numbers are part of every result: a refactor must not move them."""
    mix = seeding.mix_seed
    assert seeding.init_seed(7) == mix(7, 0, 0)
    assert seeding.order_seed(7, 3) == mix(7, 3, 1)
    assert seeding.batch_augment_seed(7, 3, 5) == mix(7, 3, 2, 5)
    assert seeding.train_noise_seed(7, 3) == mix(7, 3, 3)
    assert seeding.train_noise_seed(7, 3, 1) == mix(7, 3, 3, 1)
    assert seeding.disturb_seed(7, 3, 5) == mix(7, 3, 4, 5)
    assert [seeding.subset_seed(7, s) for s in (11, 12, 13)] == [
        mix(7, seeding.TRAIN_SUBSET), mix(7, seeding.TEST_SUBSET), mix(7, seeding.HOLDOUT)]
    # mix_seed is numpy's SeedSequence, computed independently here
    ref = int(np.random.SeedSequence([7, 3, 1]).generate_state(2, np.uint64)[0] >> 1)
    assert seeding.order_seed(7, 3) == ref
    streams = [v for k, v in vars(seeding).items() if k.isupper() and not k.startswith(("_", "ITEM"))]
    assert len(streams) == len(set(streams))  # no stream number used twice


def test_one_device_resolver():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(UserError, match="multi-process launch"):
        resolve_device("cuda:1", local_rank=0)
