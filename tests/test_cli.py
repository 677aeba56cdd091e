"""The spine end to end: configs compose, the CLI trains and writes its files, resume, bad input."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import run_cli
from isda_exp.cli.train import run
from isda_exp.errors import UserError
from isda_exp.losses import CrossEntropy, ISDALoss
from isda_exp.paths import config_dir
from isda_exp.training import preempt
from isda_exp.training.build import build_criterion, build_data, run_length

CONFIGS = Path(config_dir())
# ResNet-32 at a quarter of its width (4/8/16 channels): every layer, 1/16 of the work
TINY = ["dataset=synthetic", "dataset.train_size=256", "dataset.test_size=128",
        "trainer.progress=false", "trainer.tensorboard=true", "trainer.batch_size=64",
        "+model.net.base_width=4"]
# at half width (8/16/32 channels) where a run must last long enough to be killed: an epoch of 512
# images takes about 2 s on a quiet core
HALF_WIDTH = [*TINY[:-1], "+model.net.base_width=8"]
METRIC_KEYS = {"epoch", "train_loss", "train_error", "test_loss", "test_error", "lr", "lambda", "seconds"}
SUMMARY_KEYS = {"test_error_last10", "test_error_final", "test_error_best", "epochs", "seed", "dataset",
                "model", "aug", "method", "wall_time", "torch_version", "device"}


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=False)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# ------------------------------------------------------------------ composition


@pytest.mark.parametrize("group", ["model", "dataset", "aug", "isda", "trainer", "loss"])
def test_every_choice_composes(group):
    names = choices(group)
    assert names, group
    for name in names:
        cfg = composed(f"{group}={name}")
        assert cfg[group] is not None


def test_groups_hold_the_documented_choices():
    assert choices("isda") == sorted(["on", "off", "identity", "diagonal", "shared", "constant"])
    assert choices("aug") == ["autoaugment", "baseline", "cutout"]
    assert {"cifar10", "cifar100", "synthetic"} <= set(choices("dataset"))
    assert {"resnet32", "resnet110"} <= set(choices("model"))


@pytest.mark.parametrize("isda", choices("isda"))
def test_every_isda_choice_builds(isda):
    cfg = composed(f"isda={isda}")
    crit = build_criterion(cfg, feature_dim=64, num_classes=10)
    if isda == "off":
        assert isinstance(crit, CrossEntropy)  # plain CE is the loss group's default, loss=ce
        return
    assert isinstance(crit, ISDALoss)
    expected = {"on": "full", "constant": "full"}.get(isda, isda)
    assert crit.covariance == expected
    assert cfg.isda.constant == (isda == "constant")


def test_every_dataset_choice_builds(tmp_path):
    cfg = composed("dataset=synthetic")
    data = build_data(cfg)
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape[1:] == (3, 32, 32)
    assert len(data.y_train) == cfg.dataset.train_size and data.num_classes == 10
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        npz = tmp_path / f"{name}.npz"
        rng = np.random.default_rng(0)
        np.savez(npz, x_train=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                 y_train=np.arange(40) % classes, x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
                 y_test=np.arange(20) % classes)
        data = build_data(composed(f"dataset={name}", f"dataset.npz={npz}"))
        assert data.num_classes == classes and len(data.y_train) == 40 and len(data.y_test) == 20


def test_recipe_and_overrides():
    cfg = composed("model=resnet110")
    assert run_length(cfg) == (160, 128)
    cfg = composed("model=resnet110", "trainer.epochs=8", "trainer.batch_size=32")
    assert run_length(cfg) == (8, 32)


def test_subsets_are_seeded_and_stable():
    a = build_data(composed("dataset=synthetic", "dataset.train_subset=100", "dataset.test_subset=50"))
    b = build_data(composed("dataset=synthetic", "dataset.train_subset=100", "dataset.test_subset=50",
                            "seed=7"))
    full = build_data(composed("dataset=synthetic"))
    assert len(a.y_train) == 100 and len(a.y_test) == 50
    assert torch.equal(a.x_train, b.x_train)  # same subset for every run seed
    # the subset is drawn from the full set
    rows = {tuple(x.flatten().tolist()[:64]) for x in full.x_train}
    assert all(tuple(x.flatten().tolist()[:64]) in rows for x in a.x_train)


# ------------------------------------------------------------------ determinism (in process)


def train_in_process(tmp_path: Path, *overrides: str) -> list[dict]:
    """One tiny run in this process. Stop signals are left alone here: after test_augment's
    AutoAugment worker processes, a stray SIGTERM reached the pytest process in one ordering and
    paused the run (cause not yet found; tests/test_faults.py covers the signal handling)."""
    cfg = composed(*TINY, "dataset.train_size=128", "dataset.test_size=64", "trainer.epochs=2",
                   "trainer.tensorboard=false", *overrides)
    with mock.patch.object(preempt, "catch_signals", contextlib.nullcontext):
        run(cfg, tmp_path)
    return read_metrics(tmp_path)


def run_here(out_root: Path, *overrides: str) -> Path:
    """One run in this process, in the directory the CLI gives it (out_root/run_name): for tests
    whose subject is the run, not the process."""
    cfg = composed(*overrides)
    run_dir = out_root / cfg.run_name
    with mock.patch.object(preempt, "catch_signals", contextlib.nullcontext):
        run(cfg, run_dir)
    return run_dir


def in_process_error(tmp_path: Path, monkeypatch, *overrides: str) -> str:
    """The line the CLI prints for a UserError (test_*_one_clear_error proves the CLI prints it
    as one line with exit 2): relative paths from tmp_path, as the CLI launched there."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        run(composed(*overrides), tmp_path / "run")
    assert "\n" not in str(e.value), str(e.value)
    return f"error: {e.value}"


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    a = train_in_process(tmp_path / "a", "seed=3")
    b = train_in_process(tmp_path / "b", "seed=3")
    c = train_in_process(tmp_path / "c", "seed=4")
    assert without_time(a) == without_time(b)
    assert without_time(a) != without_time(c)


def test_isda_lambda_schedule_in_metrics(tmp_path):
    rows = train_in_process(tmp_path / "isda", "isda=on", "trainer.epochs=4")
    assert [r["lambda"] for r in rows] == [0.5 * e / 4 for e in range(4)]
    rows = train_in_process(tmp_path / "const", "isda=constant", "trainer.epochs=2")
    assert [r["lambda"] for r in rows] == [0.5, 0.5]
    rows = train_in_process(tmp_path / "off", "isda=off", "trainer.epochs=2")
    assert [r["lambda"] for r in rows] == [0.0, 0.0]


def test_lr_schedule_scales_with_epochs(tmp_path):
    # resnet32 recipe: x0.1 at 80 and 120 of 160 epochs, one epoch early -> at 4/8 of 8: epochs 4, 6
    rows = train_in_process(tmp_path, "trainer.epochs=8", "dataset.train_size=64", "dataset.test_size=32")
    assert [r["lr"] for r in rows] == pytest.approx([0.1] * 3 + [0.01] * 2 + [0.001] * 3)


# ------------------------------------------------------------------ the CLI in a subprocess


def test_cli_end_to_end_writes_the_run_files(tmp_path):
    proc = run_cli(*TINY, "trainer.epochs=2", "isda=on", "seed=5", "out_root=runs", cwd=tmp_path)
    run_dir = tmp_path / "runs/synthetic/resnet32/baseline/isda/seed5"
    assert run_dir.is_dir(), proc.stdout
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(METRIC_KEYS <= set(r) for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["test_error_last10"] == pytest.approx(np.mean([r["test_error"] for r in rows]))
    assert summary["test_error_final"] == rows[-1]["test_error"]
    assert summary["test_error_best"] == min(r["test_error"] for r in rows)
    assert (summary["method"], summary["model"], summary["aug"], summary["epochs"]) == ("isda", "resnet32", "baseline", 2)
    ckpt = torch.load(run_dir / "last.pt", weights_only=False)
    assert {"model", "classifier", "optimizer", "scheduler", "isda", "rng", "epoch"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    assert ckpt["isda"] and all(torch.is_tensor(v) for v in ckpt["isda"].values())  # the statistics
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert "epoch 2/2" in (run_dir / "train.log").read_text()
    assert "finished" in proc.stdout


def test_cli_isda_off_is_plain_cross_entropy(tmp_path):
    run_dir = run_here(tmp_path / "runs", *TINY, "trainer.epochs=1", "isda=off")
    assert run_dir == tmp_path / "runs/synthetic/resnet32/baseline/baseline/seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "baseline" and summary["variant"] is None
    assert torch.load(run_dir / "last.pt", weights_only=False)["isda"] == {}  # CE has no state


def test_finished_run_is_not_trained_again_and_other_config_is_refused(tmp_path):
    args = [*TINY, "trainer.epochs=1", "out_root=runs"]
    run_dir = run_here(tmp_path / "runs", *TINY, "trainer.epochs=1")  # trained here, then the CLI
    assert run_dir == tmp_path / "runs/synthetic/resnet32/baseline/isda/seed0"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl", ".pt")}
    proc = run_cli(*args, cwd=tmp_path)
    assert "already finished" in proc.stdout
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl", ".pt")}
    assert before == after
    proc = run_cli(*TINY, "trainer.epochs=3", "out_root=runs", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "another configuration" in proc.stderr and "trainer.epochs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 1


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_numbers(tmp_path):
    args = [*HALF_WIDTH, "trainer.epochs=3", "dataset.train_size=512", "isda=on", "seed=1"]
    # the reference trains here, on 1 thread as the CLI's processes do (OMP_NUM_THREADS=1): same numbers
    run_here(tmp_path / "straight", *args, "trainer.threads=1")
    straight = read_metrics(tmp_path / "straight/synthetic/resnet32/baseline/isda/seed1")

    run_dir = tmp_path / "killed/synthetic/resnet32/baseline/isda/seed1"
    for delay in (0.0, 0.7):  # killed right after the first checkpoint, then somewhere later
        proc = subprocess.Popen([sys.executable, "-m", "isda_exp", *args, "out_root=killed"], cwd=tmp_path,
                                env={**os.environ, "OMP_NUM_THREADS": "1"},  # as run_cli: same threads
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        start_epoch = torch.load(run_dir / "last.pt", weights_only=False)["epoch"] if (run_dir / "last.pt").exists() else 0
        while time.time() < deadline and proc.poll() is None:
            if (run_dir / "last.pt").exists() and \
                    torch.load(run_dir / "last.pt", weights_only=False)["epoch"] > start_epoch:
                break
            time.sleep(0.05)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be killed"
    proc = run_cli(*args, "out_root=killed", cwd=tmp_path)
    assert "resuming" in proc.stdout
    resumed = read_metrics(run_dir)
    assert without_time(resumed) == without_time(straight)
    a = json.loads((run_dir / "summary.json").read_text())
    b = json.loads((tmp_path / "straight/synthetic/resnet32/baseline/isda/seed1/summary.json").read_text())
    assert a["test_error_last10"] == b["test_error_last10"]


# ------------------------------------------------------------------ bad input


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_no_data_no_network_is_one_clear_error(tmp_path, monkeypatch):
    proc = run_cli("dataset=cifar10", f"dataset.root={tmp_path / 'empty'}", cwd=tmp_path, check=False)
    msg = one_line_error(proc)
    assert "CIFAR-10" in msg and "dataset.root=" in msg and "dataset.npz=" in msg
    msg = in_process_error(tmp_path, monkeypatch, "dataset=cifar100", f"dataset.root={tmp_path / 'empty'}",
                           "dataset.download=false")
    assert "CIFAR-100" in msg


def test_missing_and_malformed_npz(tmp_path, monkeypatch):
    proc = run_cli("dataset=cifar10", "dataset.npz=nope.npz", cwd=tmp_path, check=False)
    assert "not found" in one_line_error(proc)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((4, 32, 32), np.uint8), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 32, 32, 3), np.uint8), y_test=np.zeros(2, np.int64))
    msg = in_process_error(tmp_path, monkeypatch, "dataset=cifar10", f"dataset.npz={bad}")
    assert "x_train" in msg and "[N, 32, 32, 3]" in msg
    np.savez(bad, x_train=np.zeros((4, 32, 32, 3), np.uint8), y_train=np.zeros(3, np.int64),
             x_test=np.zeros((2, 32, 32, 3), np.uint8), y_test=np.zeros(2, np.int64))
    assert "y_train" in in_process_error(tmp_path, monkeypatch, "dataset=cifar10", f"dataset.npz={bad}")
    np.savez(bad, x_train=np.zeros((4, 32, 32, 3), np.uint8), y_train=np.zeros(4, np.int64))
    assert "x_test" in in_process_error(tmp_path, monkeypatch, "dataset=cifar10", f"dataset.npz={bad}")
    (tmp_path / "text.npz").write_text("not an archive")
    assert ".npz" in in_process_error(tmp_path, monkeypatch, "dataset=cifar10", "dataset.npz=text.npz")


def test_wrong_choice_and_unknown_key_fail_with_hydra_message(tmp_path):
    proc = run_cli("model=resnet33", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "resnet32" in proc.stderr and "resnet110" in proc.stderr
    proc = run_cli("trainer.epochz=3", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "epochz" in proc.stderr
    proc = run_cli("--help", cwd=tmp_path)
    for group in ("model:", "dataset:", "aug:", "isda:", "loss:"):
        assert group in proc.stdout


def test_bad_values(tmp_path, monkeypatch):
    proc = run_cli(*TINY, "trainer.precision=fp8", cwd=tmp_path, check=False)
    assert "fp8" in one_line_error(proc)
    assert "train_subset" in in_process_error(tmp_path, monkeypatch, *TINY, "dataset.train_subset=999999")
    if not torch.cuda.is_available():
        assert "CUDA" in in_process_error(tmp_path, monkeypatch, *TINY, "device=cuda")


# ------------------------------------------------------------------ real data


@pytest.mark.slow
def test_resnet32_two_short_epochs_on_real_cifar10(tmp_path, cifar10_npz):
    """ResNet-32 (at half width: 8/16/32 channels, a quarter of the work) with ISDA learns real
    CIFAR-10: 2 epochs of 10,000 images (the scaled schedule drops the LR after the first),
    tested on the full test set. Measured on 2 threads: final error 63.3, 59.2, 58.9% over seeds
    0-2, each 12-20 points below its first epoch's 75.8-79.6%; on one thread (as here, beside the
    other tests) seed 0 gave 80.8% then 63.8%, in 90 s. A single epoch at LR 0.1 is too noisy to
    test on. Evaluation in batches of 128: on the CPU, 2.4x faster than the default 1024. fp32:
    bf16 autocast is about 10x slower than fp32 on CPUs without AVX512-BF16 (the 2-core AVX2 host
    of this project)."""
    proc = run_cli("model=resnet32", "+model.net.base_width=8", "dataset=cifar10", f"dataset.npz={cifar10_npz}",
                   "isda=on", "trainer.epochs=2", "dataset.train_subset=10000", "trainer.progress=false",
                   "trainer.eval_batch_size=128", "out_root=runs", cwd=tmp_path)
    run = tmp_path / "runs/cifar10/resnet32/baseline/isda/seed0"
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["test_size"] == 10000  # the full test set
    assert summary["test_error_final"] < 72.0, proc.stdout  # chance is 90%
    assert rows[-1]["test_error"] < rows[0]["test_error"] - 5, proc.stdout
    assert rows[-1]["lambda"] > 0  # the ISDA term was on


def test_finished_run_says_what_was_averaged(tmp_path):
    """A 3-epoch run's "last-10" number is the mean of its 3 epochs, and the log says so."""
    args = [*TINY, "trainer.epochs=3", f"hydra.run.dir={tmp_path / 'run'}"]
    run_here(tmp_path, *args[:-1], "run_name=run")  # trained here; the CLI then reports it
    rows = read_metrics(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_error_last10"] == pytest.approx(np.mean([r["test_error"] for r in rows]))
    again = run_cli(*args, cwd=tmp_path)
    assert "mean of all 3 epochs; the run is shorter than 10" in again.stdout
    assert "last 10" not in again.stdout
