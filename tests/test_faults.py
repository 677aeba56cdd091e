"""Fault injection: every way a run on a shared cluster goes wrong, and what the user then sees.

Each test asserts the user-visible outcome: the exit status, the one-line message, the files
left, and (where the run can go on) that the recovered run ends with exactly the numbers of an
uninterrupted one. Runs are tiny (64 or 128 images, 4 steps an epoch, 1 thread) so that CPU
results are bit-for-bit reproducible across processes.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import run_cli, wait_for
from isda_exp import report, rundir
from isda_exp.cli.train import run
from isda_exp.data import load_synthetic
from isda_exp.data.cifar_augment import build_augment
from isda_exp.errors import UserError
from isda_exp.paths import config_dir
from isda_exp.rundir.lock import RunLock, RunLocked
from isda_exp.training import preempt
from isda_exp.training.engine import Engine
from isda_exp.training.trainer import Diverged, Trainer
from isda_exp.training.validate import check_config

TINY = ["dataset=synthetic", "dataset.train_size=128", "dataset.test_size=64", "trainer.batch_size=32",
        "trainer.progress=false", "trainer.tensorboard=false", "trainer.threads=1", "trainer.epochs=2",
        "isda=on", "seed=1"]  # 4 steps an epoch; ISDA active (lambda > 0) in epoch 2
RUN = "synthetic/resnet32/baseline/isda/seed1"
STEPS = 4
# in-process runs: ResNet-32 at a quarter of its width (1/16 of the work) on half the images, still
# 4 steps an epoch; runs in real processes (TINY) keep the full width, so that they last long
# enough to be signalled or killed
QUICK_BATCH = 16
QUICK = ["+model.net.base_width=4", "dataset.train_size=64", "dataset.test_size=32",
         f"trainer.batch_size={QUICK_BATCH}"]


def composed(*overrides: str, quick: bool = True):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*TINY, *(QUICK if quick else []), *overrides])


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without timing, read strictly: a bare NaN or Infinity is an error."""
    def refuse(constant):
        raise AssertionError(f"metrics.jsonl holds a bare {constant}")
    rows = [json.loads(line, parse_constant=refuse) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def final(run_dir: Path) -> tuple[list[dict], float]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return metrics(run_dir), summary["test_error_last10"]


@pytest.fixture(scope="module")
def straight_dir(tmp_path_factory) -> Path:
    """The uninterrupted run every recovery must reproduce exactly."""
    run_dir = tmp_path_factory.mktemp("straight") / RUN
    run(composed(), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def straight(straight_dir) -> tuple[list[dict], float]:
    rows, last10 = final(straight_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    return rows, last10


@pytest.fixture(scope="module")
def straight_full(tmp_path_factory) -> tuple[list[dict], float]:
    """The uninterrupted run at full width (TINY): what the runs in real processes must reproduce."""
    run_dir = tmp_path_factory.mktemp("straight_full") / RUN
    run(composed(quick=False), run_dir)
    rows, last10 = final(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    return rows, last10


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def no_temp_files(run_dir: Path) -> bool:
    return not list(run_dir.glob(".*.tmp"))


class StepHook:
    """Calls `action` after the n-th training step of this process (deterministic injection)."""

    def __init__(self, monkeypatch, n: int, action):
        self.count, self.n, self.action = 0, n, action
        original = Engine.train_step

        def train_step(engine, *args):
            out = original(engine, *args)
            self.count += 1
            if self.count == self.n:
                self.action(engine)
            return out
        monkeypatch.setattr(Engine, "train_step", train_step)


# ------------------------------------------------------------------ bad values


BAD_VALUES = [
    ("trainer.epochs=0", "trainer.epochs=0", "null (the model's recipe) or an integer >= 1"),
    ("trainer.epochs=-3", "trainer.epochs=-3", ">= 1"),
    ("trainer.epochs=2.5", "trainer.epochs=2.5", ">= 1"),
    ("trainer.batch_size=0", "trainer.batch_size=0", "null (the model's recipe) or an integer >= 1"),
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0", ">= 1"),
    ("trainer.num_workers=-1", "trainer.num_workers=-1", "auto or an integer >= 0"),
    ("trainer.num_workers=many", "trainer.num_workers=many", "auto"),
    ("trainer.threads=0", "trainer.threads=0", ">= 1"),
    ("trainer.checkpoint_minutes=0", "trainer.checkpoint_minutes=0", "> 0"),
    ("model.recipe.lr=abc", "model.recipe.lr=abc", "a number > 0"),
    ("model.recipe.lr=0", "model.recipe.lr=0", "a number > 0"),
    ("model.recipe.lr=-0.1", "model.recipe.lr=-0.1", "a number > 0"),
    ("model.recipe.lr=nan", "model.recipe.lr=nan", "a number > 0"),
    ("model.recipe.momentum=1.5", "model.recipe.momentum=1.5", "[0, 1)"),
    ("model.recipe.momentum=0", "model.recipe.momentum=0", "nesterov"),
    ("model.recipe.weight_decay=-1e-4", "model.recipe.weight_decay=-0.0001", ">= 0"),
    ("isda.lambda_0=-1", "isda.lambda_0=-1", ">= 0"),
    ("isda.lambda_0=inf", "isda.lambda_0=inf", ">= 0"),
    ("seed=-5", "seed=-5", "0 .. 2**63-1"),
    ("seed=abc", "seed=abc", "0 .. 2**63-1"),
    ("seed=1.5", "seed=1.5", "integer"),
    ("dataset.train_subset=0", "dataset.train_subset=0", "null (all images) or an integer >= 1"),
    ("dataset.test_subset=-2", "dataset.test_subset=-2", ">= 1"),
    ("dataset.train_size=0", "dataset.train_size=0", ">= 1"),
    ("trainer.precision=fp8", "trainer.precision=fp8", "fp32, bf16 or fp16"),
    ("aug=cutout aug.cutout_length=-1", "aug.cutout_length=-1", ">= 0"),
]


@pytest.mark.parametrize("override,shown,allowed", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_every_bad_value_fails_before_any_work_naming_key_value_and_range(tmp_path, override, shown, allowed):
    cfg = composed(*override.split())
    with pytest.raises(UserError) as e:
        run(cfg, tmp_path / "run")
    msg = str(e.value)
    assert msg.startswith(shown + " ") or msg.startswith(shown + "=") or shown in msg, msg
    assert allowed in msg and "\n" not in msg
    assert not (tmp_path / "run").exists()  # nothing created, nothing trained


def test_null_epochs_and_batch_size_mean_the_recipe():
    cfg = composed("trainer.epochs=null", "trainer.batch_size=null")
    check_config(cfg)
    trainer_epochs = cfg.model.recipe.epochs
    from isda_exp.training.build import run_length
    assert run_length(cfg) == (trainer_epochs, cfg.model.recipe.batch_size) == (160, 128)


def test_bad_values_from_the_command_line_are_one_line_exit_2(tmp_path):
    # one real process for the contract (exit 2, one line on stderr); the second value in-process:
    # the CLI prints the same UserError as that one line
    proc = run_cli(*TINY, "trainer.epochs=0", "out_root=runs", cwd=tmp_path, check=False)
    assert "trainer.epochs=0 is not allowed" in one_line_error(proc)
    assert not list((tmp_path / "runs").rglob("last.pt")) and not list((tmp_path / "runs").rglob("metrics.jsonl"))
    with pytest.raises(UserError) as e:
        run(composed("seed=abc"), tmp_path / "runs" / RUN)
    assert "seed=abc is not allowed" in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "runs").rglob("last.pt")) and not list((tmp_path / "runs").rglob("metrics.jsonl"))


# ------------------------------------------------------------------ mid-epoch resume: the data


@pytest.mark.parametrize("aug", ["baseline", "cutout", "autoaugment"])
def test_an_epoch_served_from_batch_k_is_the_tail_of_the_whole_epoch(aug):
    data = load_synthetic(train_size=70, test_size=8)
    stream = data.train_stream(build_augment(aug, 0 if aug == "baseline" else 8), 16, seed=3,
                               device=torch.device("cpu"), num_workers=0)
    whole = list(stream.epoch(2))
    assert len(whole) == 5
    for k in (1, 3, 4):
        tail = list(stream.epoch(2, start_batch=k))
        assert len(tail) == 5 - k
        for (xa, ya), (xb, yb) in zip(whole[k:], tail):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = list(stream.epoch(3))
    assert not torch.equal(whole[2][0], other[2][0])  # still random: a function of (seed, epoch, batch)


# ------------------------------------------------------------------ preemption (in process: exact step)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT])
def test_a_stop_signal_mid_epoch_writes_a_mid_epoch_checkpoint_and_resumes_exactly(
        tmp_path, monkeypatch, caplog, straight, sig):
    caplog.set_level(logging.INFO, logger="isda_exp")
    run_dir = tmp_path / RUN
    hook = StepHook(monkeypatch, STEPS + 2, lambda t: os.kill(os.getpid(), sig))  # epoch 2, batch 2
    before = signal.getsignal(sig)
    with pytest.raises(preempt.Preempted) as e:
        run(composed(), run_dir)
    assert e.value.signum == sig and hook.count == STEPS + 2  # the step in flight finished, no more
    assert signal.getsignal(sig) == before  # handlers restored
    lines = [r.getMessage() for r in caplog.records if "stopped by" in r.getMessage()]
    assert lines == [f"stopped by {signal.Signals(sig).name} in epoch 2/2 after batch 2/4: checkpoint "
                     f"written to {run_dir / 'last.pt'}; run the same command to resume"]
    ckpt = rundir.load_checkpoint(run_dir / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["partial"]["batch"] == 2 and ckpt["partial"]["seen"] == 2 * QUICK_BATCH
    assert not (run_dir / "summary.json").exists() and no_temp_files(run_dir)

    monkeypatch.undo()
    run(composed(), run_dir)
    assert "resuming" in caplog.text and "in epoch 2 at batch 2/4" in caplog.text
    assert final(run_dir) == straight


def test_sigterm_during_a_save_completes_the_save_then_stops(tmp_path, monkeypatch, straight):
    run_dir = tmp_path / RUN
    original = rundir.save_checkpoint
    calls = []

    def save_with_signal(path, state):
        calls.append(state["epoch"])
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while this save is in progress
        original(path, state)
    monkeypatch.setattr(rundir, "save_checkpoint", save_with_signal)
    with pytest.raises(preempt.Preempted) as e:
        run(composed(), run_dir)
    assert "after epoch 1/2" in str(e.value) and calls == [1]
    assert rundir.load_checkpoint(run_dir / "last.pt")["epoch"] == 1 and no_temp_files(run_dir)
    monkeypatch.undo()
    run(composed(), run_dir)
    assert final(run_dir) == straight


def test_checkpoint_minutes_writes_mid_epoch_checkpoints(tmp_path, monkeypatch):
    saved = []
    original = rundir.save_checkpoint
    monkeypatch.setattr(rundir, "save_checkpoint",
                        lambda path, state: (saved.append((state["epoch"], (state["partial"] or {}).get("batch"))),
                                             original(path, state)))
    run(composed("trainer.checkpoint_minutes=1e-9", "trainer.epochs=1"), tmp_path / RUN)
    assert saved == [(0, 1), (0, 2), (0, 3), (0, 4), (1, None)]


# ------------------------------------------------------------------ preemption and kill -9 (real processes)


def start(cwd: Path, *args: str) -> subprocess.Popen:
    flags = [a for a in args if a.startswith("-")]  # -m before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.Popen([sys.executable, "-m", "isda_exp", *flags, *TINY, *overrides], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigterm_and_ctrl_c_from_outside_save_and_resume_exactly(tmp_path, caplog, straight_full):
    run_dir = tmp_path / "runs" / RUN
    args = ["out_root=runs", "trainer.checkpoint_minutes=1e-9"]  # a checkpoint every step: many moments
    proc = start(tmp_path, *args)
    wait_for(lambda: (run_dir / "last.pt").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM, out + err  # ended by the signal, as a cluster expects
    assert out.count("stopped by SIGTERM") == 1 and "Traceback" not in out + err
    assert rundir.load_checkpoint(run_dir / "last.pt")["epoch"] < 2 and no_temp_files(run_dir)

    proc = start(tmp_path, *args)
    mtime = (run_dir / "last.pt").stat().st_mtime_ns
    wait_for(lambda: (run_dir / "last.pt").stat().st_mtime_ns != mtime, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before Ctrl-C arrived")
    assert proc.returncode == 130 and "Traceback" not in out + err and "KeyboardInterrupt" not in err, out + err
    assert out.count("stopped by SIGINT") == 1 and "resuming" in out

    # what the signalled processes saved resumes here (the CLI's run(), its numbers on 1 thread)
    caplog.set_level(logging.INFO, logger="isda_exp")
    run(composed("trainer.checkpoint_minutes=1e-9", quick=False), run_dir)
    assert "resuming" in caplog.text
    assert final(run_dir) == straight_full


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_numbers(tmp_path, straight_full):
    run_dir = tmp_path / "runs" / RUN
    args = ["out_root=runs", "trainer.checkpoint_minutes=1e-9"]  # saving all the time: kills land mid-save
    rng = random.Random(11)
    kills = 0
    for trial in range(6):
        proc = start(tmp_path, *args)
        wait_for(lambda: (rundir.lock.read_holder(run_dir / ".lock") or {}).get("pid") == proc.pid, proc)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if (run_dir / "summary.json").exists():
            break
    assert kills >= 3
    proc = run_cli(*TINY, *args, cwd=tmp_path)
    assert final(run_dir) == straight_full and no_temp_files(run_dir)


# ------------------------------------------------------------------ divergence


def test_a_huge_lr_stops_with_one_line_and_failed_json(tmp_path):
    proc = run_cli(*TINY, *QUICK, "model.recipe.lr=1e6", "out_root=runs", cwd=tmp_path, check=False)
    msg = one_line_error(proc)
    assert "training diverged in epoch 1/2 at step" in msg and "loss nan" in msg
    assert "model.recipe.lr" in msg and "isda.lambda_0" in msg
    run_dir = tmp_path / "runs" / RUN
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["reason"] == "diverged" and failed["epoch"] == 1 and failed["error"] == msg[len("error: "):]
    assert not (run_dir / "summary.json").exists() and not (run_dir / "last.pt").exists()
    assert metrics(run_dir) == []


def test_divergence_mid_run_keeps_the_last_good_checkpoint_and_the_report_does_not_average_it(
        tmp_path, monkeypatch, capsys):
    root = tmp_path / "runs"
    run(composed("seed=2"), root / "synthetic/resnet32/baseline/isda/seed2")  # a finished, good run
    run_dir = root / RUN

    def poison(engine):  # weights blow up in epoch 2, step 2: what a divergence leaves behind
        with torch.no_grad():
            engine.fc.weight.mul_(float("inf"))
    StepHook(monkeypatch, STEPS + 2, poison)
    good = {}
    original = rundir.save_checkpoint
    monkeypatch.setattr(rundir, "save_checkpoint",
                        lambda path, state: (original(path, state), good.setdefault("bytes", path.read_bytes())))
    with pytest.raises(Diverged) as e:
        run(composed(), run_dir)
    assert "epoch 2/2 at step" in str(e.value) and "last good checkpoint last.pt is kept" in str(e.value)
    assert (run_dir / "last.pt").read_bytes() == good["bytes"]  # epoch 1's, untouched
    ckpt = rundir.load_checkpoint(run_dir / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["classifier"].values())
    assert [r["epoch"] for r in metrics(run_dir)] == [1]
    assert json.loads((run_dir / "failed.json").read_text())["reason"] == "diverged"
    assert not (run_dir / "summary.json").exists()

    capsys.readouterr()
    report.main([str(root)])
    out = capsys.readouterr().out
    good_error = json.loads((root / "synthetic/resnet32/baseline/isda/seed2/summary.json").read_text())
    assert f"| 1 | {good_error['test_error_last10']:.2f} |" in out  # one seed averaged: the good run only
    assert f"| failed | {RUN} | training diverged in epoch 2/2" in out


def test_no_host_sync_per_step(tmp_path, monkeypatch):
    trainer = Trainer(composed("isda=off", f"dataset.train_size={8 * QUICK_BATCH}"), tmp_path)  # 8 steps
    syncs = []
    for name in ("item", "__bool__", "__float__", "tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _o=original, _n=name, **k: (syncs.append(_n), _o(self, *a, **k))[1])
    trainer.train_epoch(0)
    monkeypatch.undo()
    assert len(syncs) <= 3, syncs  # the end-of-epoch check and the two epoch totals, for 8 steps


# ------------------------------------------------------------------ bad checkpoints


class Payload:
    """A pickle that runs code when unpickled without weights_only: it creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def crafted_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"epoch": 1, "model": Payload(marker)}, path)


def test_the_crafted_payload_is_real_when_loaded_unsafely(tmp_path):
    marker = tmp_path / "pwned"
    crafted_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()  # so the next tests prove something: this file would run code


@pytest.mark.parametrize("damage", ["truncated", "garbage", "crafted", "empty", "not_a_checkpoint"])
def test_a_bad_last_pt_falls_back_to_the_previous_one(tmp_path, caplog, straight_dir, straight, damage):
    caplog.set_level(logging.INFO, logger="isda_exp")
    warm = tmp_path / "warm" / RUN
    shutil.copytree(straight_dir, warm)  # last.pt: after epoch 2, last.prev.pt: after epoch 1
    (warm / "summary.json").unlink()
    assert rundir.load_checkpoint(warm / "last.prev.pt")["epoch"] == 1
    marker = tmp_path / "pwned"
    last = warm / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "garbage":
        last.write_bytes(os.urandom(4096))
    elif damage == "crafted":
        crafted_checkpoint(last, marker)
    elif damage == "empty":
        last.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, last)
    run(composed("trainer.epochs=2"), warm)
    assert not marker.exists()  # the payload never ran
    warning = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warning: cannot load")]
    assert len(warning) == 1 and str(last) in warning[0] and str(warm / "last.prev.pt") in warning[0]
    if damage == "crafted":
        assert "refused" in warning[0]
    assert "resuming" in caplog.text and "after epoch 1/2" in caplog.text
    assert final(warm) == straight


def test_no_loadable_checkpoint_is_one_line_naming_the_file_and_the_fix(tmp_path, capfd):
    run_dir = tmp_path / "runs" / RUN
    marker = tmp_path / "pwned"
    run(composed("trainer.epochs=1"), run_dir)
    (run_dir / "summary.json").unlink()
    crafted_checkpoint(run_dir / "last.pt", marker)
    before = (run_dir / "last.pt").read_bytes()
    capfd.readouterr()
    with pytest.raises(UserError) as e:  # the CLI prints it as its one line, exit 2 (test above)
        run(composed("trainer.epochs=1"), run_dir)
    msg = str(e.value)
    assert "\n" not in msg and capfd.readouterr().err == ""  # nothing else on stderr
    assert str(run_dir / "last.pt") in msg and "refused" in msg and "move last.pt" in msg
    assert not marker.exists() and (run_dir / "last.pt").read_bytes() == before  # nothing deleted


def test_stray_temp_files_of_a_killed_save_are_removed_on_start(tmp_path, straight):
    run_dir = tmp_path / RUN
    run_dir.mkdir(parents=True)
    for name in (".last.pt.abc123.tmp", ".last.prev.pt.link.tmp", ".metrics.jsonl.x.tmp"):
        (run_dir / name).write_bytes(b"half a checkpoint")
    run(composed(), run_dir)
    assert no_temp_files(run_dir) and final(run_dir) == straight


def test_checkpoints_rotate_last_and_previous(tmp_path):
    run_dir = tmp_path / RUN
    run(composed("trainer.epochs=3"), run_dir)
    assert rundir.load_checkpoint(run_dir / "last.pt")["epoch"] == 3
    assert rundir.load_checkpoint(run_dir / "last.prev.pt")["epoch"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_checkpoint_written_on_cuda_resumes_on_the_cpu_and_back(tmp_path, monkeypatch):
    run_dir = tmp_path / RUN
    StepHook(monkeypatch, STEPS + 1, lambda t: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(preempt.Preempted):
        run(composed("trainer.epochs=3", "device=cuda"), run_dir)
    monkeypatch.undo()
    StepHook(monkeypatch, STEPS + 1, lambda t: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(preempt.Preempted):
        run(composed("trainer.epochs=3", "device=cpu"), run_dir)  # CUDA checkpoint on the CPU
    monkeypatch.undo()
    run(composed("trainer.epochs=3", "device=cuda"), run_dir)  # and the CPU one back on CUDA
    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert json.loads((run_dir / "summary.json").read_text())["device"].startswith("cuda")


# ------------------------------------------------------------------ one process per run


def test_a_locked_run_names_its_holder(tmp_path):
    run_dir = tmp_path / RUN
    with RunLock(run_dir):
        holder = json.loads((run_dir / ".lock").read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(RunLocked) as e:
            run(composed(), run_dir)
    msg = str(e.value)
    assert f"pid {os.getpid()}" in msg and f"host {holder['host']}" in msg and f"since {holder['since']}" in msg
    assert not (run_dir / "metrics.jsonl").exists()
    assert (run_dir / ".lock").read_text() == ""  # released


HOLD_AND_FORK = """
import multiprocessing as mp, sys, time
from isda_exp.rundir.lock import RunLock


def worker(started):
    started.set()  # the fork's hooks have run by now
    time.sleep(60)


if __name__ == "__main__":
    fork = mp.get_context("fork")
    with RunLock(sys.argv[1]):
        started = fork.Event()
        child = fork.Process(target=worker, args=(started,), daemon=True)
        child.start()  # as a DataLoader worker is started: a fork of the run's process
        assert started.wait(60)
        print(child.pid, flush=True)
        time.sleep(60)
"""


def test_a_run_killed_with_9_is_free_at_once_though_its_forked_workers_live_on(tmp_path):
    """flock belongs to the open file, which a forked worker shares: unless the worker drops its
    copy, the lock outlives the killed run until its workers notice (the resuming command was
    refused, naming the dead pid)."""
    run_dir = tmp_path / RUN
    proc = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(run_dir)], stdout=subprocess.PIPE,
                            text=True)
    child = int(proc.stdout.readline())
    try:
        proc.kill()
        proc.wait()
        assert os.path.exists(f"/proc/{child}")  # the forked child still runs
        with RunLock(run_dir):  # and does not hold the run
            assert rundir.lock.read_holder(run_dir / ".lock")["pid"] == os.getpid()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_the_same_command_started_twice_at_once_trains_each_epoch_once(tmp_path, straight_full):
    a, b = start(tmp_path, "out_root=runs"), start(tmp_path, "out_root=runs")
    (out_a, err_a), (out_b, err_b) = a.communicate(timeout=600), b.communicate(timeout=600)
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 2], (out_a, err_a, out_b, err_b)
    err = err_a if a.returncode == 2 else err_b
    assert len(err.strip().splitlines()) == 1 and "is being trained by another process (host " in err
    assert "pid " in err and "since " in err
    run_dir = tmp_path / "runs" / RUN
    assert final(run_dir) == straight_full  # each epoch exactly once, the numbers of one run


@pytest.mark.slow
def test_two_sweeps_on_one_out_root_share_the_runs(tmp_path):
    sweep = ["-m", "seed=1,2", "out_root=runs"]
    a, b = start(tmp_path, *sweep), start(tmp_path, *sweep)
    (out_a, err_a), (out_b, err_b) = a.communicate(timeout=600), b.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, (out_a, err_a, out_b, err_b)
    for seed in (1, 2):
        run_dir = tmp_path / f"runs/synthetic/resnet32/baseline/isda/seed{seed}"
        assert [r["epoch"] for r in metrics(run_dir)] == [1, 2]  # each epoch exactly once
        assert (run_dir / "summary.json").exists()
    logs = out_a + err_a + out_b + err_b
    trained = logs.count("finished /")
    assert trained == 2, logs  # every run trained by exactly one sweep
    assert "running elsewhere" in logs and "run(s) running elsewhere" in logs
    assert not list((tmp_path / "runs" / ".isda_sweeps").glob("*")) if (tmp_path / "runs" / ".isda_sweeps").exists() else True


# ------------------------------------------------------------------ full disk, read-only disk


@pytest.mark.parametrize("code,text", [(errno.ENOSPC, "no space left on device"),
                                       (errno.EROFS, "read-only file system")])
def test_a_full_or_read_only_disk_is_one_line_and_loses_nothing(tmp_path, monkeypatch, straight, code, text):
    run_dir = tmp_path / RUN
    real_fsync = os.fsync
    state = {"n": 0}

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if ".last.pt." in name:
            state["n"] += 1
            if state["n"] == 2:  # the second checkpoint: the disk is full now
                raise OSError(code, os.strerror(code))
        return real_fsync(fd)
    monkeypatch.setattr(rundir.files.os, "fsync", fsync)
    with pytest.raises(UserError) as e:
        run(composed(), run_dir)
    assert str(e.value).startswith(f"{text} while writing {run_dir / 'last.pt'}; ")
    assert rundir.load_checkpoint(run_dir / "last.pt")["epoch"] == 1 and no_temp_files(run_dir)
    monkeypatch.undo()
    run(composed(), run_dir)
    assert final(run_dir) == straight


def _tmpfs_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m none /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(sys.platform != "linux" or not _tmpfs_works(), reason="needs unshare + tmpfs mounts")
def test_a_really_full_disk_small_tmpfs(tmp_path, caplog, straight):
    """A 540 KB tmpfs holds the first 360 KB checkpoint (QUICK) but not a second beside it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    saved = tmp_path / "saved"
    cmd = " ".join([sys.executable, "-m", "isda_exp", *TINY, *QUICK, f"out_root={mnt}/runs"])
    script = (f"mount -t tmpfs -o size=540k none {mnt} && {{ {cmd} > {tmp_path}/out 2> {tmp_path}/err; "
              f"echo $? > {tmp_path}/rc; df -k {mnt} > {tmp_path}/df; cp -a {mnt}/runs {saved}; }}")
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=600,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = (tmp_path / "err").read_text()
    assert (tmp_path / "rc").read_text().strip() == "2", err
    run_dir = saved / RUN
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no space left on device while writing {mnt}/runs/"), err
    assert rundir.load_checkpoint(run_dir / "last.pt")["epoch"] == 1 and no_temp_files(run_dir)
    # lose nothing: on a disk with room, the same run resumes (here: the CLI's run()) and ends as
    # if never stopped
    caplog.set_level(logging.INFO, logger="isda_exp")
    run(composed(), run_dir)
    assert "resuming" in caplog.text
    assert final(run_dir) == straight


# ------------------------------------------------------------------ Hydra's Slurm path, run locally


@pytest.mark.slow
def test_submitit_local_sweep_and_a_preempted_job_is_requeued_and_resumes(tmp_path, straight_full):
    """hydra-submitit-launcher with its local executor (the Slurm launcher's code path): a 2-job
    sweep; one job gets SIGUSR2 (what Slurm/submitit send on preemption or before the time limit),
    writes a mid-epoch checkpoint, is requeued by submitit and resumes to the uninterrupted numbers."""
    launcher = start(tmp_path, "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20",
                     "seed=1,2", "out_root=runs", "trainer.checkpoint_minutes=1e-9")
    run_dir = tmp_path / "runs" / RUN
    wait_for(lambda: (run_dir / "last.pt").exists() and (run_dir / ".lock").stat().st_size > 0, launcher)
    pid = json.loads((run_dir / ".lock").read_text())["pid"]
    assert pid != launcher.pid  # the job runs in its own submitit process
    os.kill(pid, signal.SIGUSR2)
    out, err = launcher.communicate(timeout=900)
    assert launcher.returncode == 0, out + err
    log = (run_dir / "train.log").read_text()
    assert log.count("stopped by SIGUSR2") == 1, log
    stop = log.index("stopped by SIGUSR2")
    assert "resuming" in log[stop:] and "at batch" in log[stop:], log  # the requeued job resumed mid-epoch
    # submitit's own handler got the signal after our checkpoint and requeued the job (exit 144,
    # restarted by the local controller); its INFO lines are not logged, its WARNING is
    job_logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "runs/.submitit").rglob("*.err"))
    assert "Caught signal SIGUSR2" in job_logs and "this job is preempted" in job_logs, job_logs
    assert final(run_dir) == straight_full
    assert (tmp_path / "runs/synthetic/resnet32/baseline/isda/seed2/summary.json").exists()
