"""One run over several processes (DDP, gloo on the CPU) equals the one-process run of the same
global batch: the same images with the same augmentation in every step, the same per-step losses
(float reduction order only), the same ISDA statistics and test error counts. And the run's
life cycle under torchrun: rank 0 alone writes, kill -9 then the same command resumes, a finished
run exits 0 on every rank, a failing rank brings the others down with a clear error, quickly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import free_port, start_ranks, wait_for
from isda_exp.parallel import distributed, launch
from isda_exp.parallel.sync_batchnorm import CPUSyncBatchNorm2d
from isda_exp.paths import config_dir

TORCHRUN = Path(sys.executable).with_name("torchrun")
# ResNet-32 at a quarter of its width (4/8/16 channels): every layer, 1/16 of the work
TINY = ["dataset=synthetic", "dataset.train_size=256", "dataset.test_size=128",
        "trainer.batch_size=64", "trainer.progress=false", "+model.net.base_width=4"]
AUGS = ("baseline", "cutout", "autoaugment")


def trainer_for(aug: str, run_dir: Path):
    from isda_exp.training.trainer import Trainer

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"aug={aug}", "isda=on", "device=cpu",
                                          "trainer.epochs=2", "trainer.threads=1",
                                          "trainer.num_workers=0", "trainer.sync_bn=true",
                                          "trainer.tensorboard=false", "trainer.eval_batch_size=48"])
    return Trainer(cfg, run_dir)


def float64_trainer_for(aug: str, run_dir: Path):
    """The trainer in float64: at initialisation ResNet-32's float32 gradients are off by up to
    2% from float64's in some layers in ONE process (near-degenerate BatchNorm channels), which
    would swamp the comparison; in float64 the ranks must match the one process to rounding."""
    from isda_exp.data import normalize

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        trainer = trainer_for(aug, run_dir)
    finally:
        torch.set_default_dtype(default)
    trainer.engine.inputs = lambda x: normalize(x).double()
    return trainer


def record(aug: str, run_dir: Path) -> dict:
    """Two epochs (lambda = 0, then 0.25): per step this rank's images, labels and loss sum;
    per epoch the metrics; at the end the ISDA statistics."""
    trainer = float64_trainer_for(aug, run_dir)
    assert trainer.engine.fc.weight.dtype == torch.float64
    steps, epochs = [], []
    train_step = trainer.engine.train_step

    def recording_step(x, y, ratio, *at):  # at: (epoch, step)
        loss, logits = train_step(x, y, ratio, *at)
        steps.append((x.clone(), y.clone(), float(loss) * len(y)))
        return loss, logits

    trainer.engine.train_step = recording_step
    for epoch in range(2):
        epochs.append({**trainer.train_epoch(epoch), **trainer.evaluate()})
        trainer.run.scheduler.step()
    losses = torch.tensor([s[2] for s in steps], dtype=torch.float64)
    sizes = torch.tensor([len(s[1]) for s in steps], dtype=torch.float64)
    if distributed.world() > 1:  # the global mean loss of each step
        torch.distributed.all_reduce(losses)
        torch.distributed.all_reduce(sizes)
    return {"x": [s[0] for s in steps], "y": [s[1] for s in steps], "loss": losses / sizes,
            "epochs": epochs, "isda": trainer.engine.criterion.state_dict()}


def join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert distributed.setup("cpu", 60) == "cpu"


def equal_worker(rank: int, world: int, port: int, out: str) -> None:
    join(rank, world, port)
    try:
        results = {aug: record(aug, Path(out) / f"run{rank}") for aug in AUGS}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


@pytest.mark.slow
def test_two_ranks_with_sync_bn_equal_one_process_on_the_global_batch(tmp_path):
    start_ranks(equal_worker, (2, free_port(), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for aug in AUGS:
        one = record(aug, tmp_path / "one")
        parts = [r[aug] for r in ranks]
        assert len(one["x"]) == len(parts[0]["x"]) == len(parts[1]["x"]) == 8, aug
        for step, (x, y) in enumerate(zip(one["x"], one["y"])):
            assert [len(p["y"][step]) for p in parts] == [len(y) // 2] * 2
            # same images, same augmentation: rank 0 holds the first half, rank 1 the second
            assert torch.equal(torch.cat([p["x"][step] for p in parts]), x), (aug, step)
            assert torch.equal(torch.cat([p["y"][step] for p in parts]), y), (aug, step)
        torch.testing.assert_close(parts[0]["loss"], one["loss"], rtol=1e-9, atol=0)
        assert torch.equal(parts[0]["loss"], parts[1]["loss"])  # both ranks report the global mean
        for key, value in one["isda"].items():
            for p in parts:
                torch.testing.assert_close(p["isda"][key], value, rtol=1e-9, atol=1e-9 * (
                    1 + float(value.abs().max())), msg=f"{aug} ISDA {key}")
        assert torch.equal(parts[0]["isda"]["counts"], one["isda"]["counts"])
        assert int(one["isda"]["counts"].sum()) == 512  # two epochs of 256 images
        for e1, e0, e in zip(*[p["epochs"] for p in parts], one["epochs"]):
            assert e0 == e1  # every rank holds the reduced numbers
            assert round(e0["test_error"] * 128 / 100) == round(e["test_error"] * 128 / 100)
            assert e0["train_error"] == e["train_error"]
            assert e0["train_loss"] == pytest.approx(e["train_loss"], rel=1e-9)
            # the test pass takes its loss from float32 logits (by design): float32 rounding
            assert e0["test_loss"] == pytest.approx(e["test_loss"], rel=1e-6)
            assert e0["lambda"] == e["lambda"]
        assert one["epochs"][1]["lambda"] > 0  # the ISDA term was on in the second epoch


def loss_worker(rank: int, world: int, port: int, out: str) -> None:
    """This rank's half of a global batch through DisturbLabel and the centre loss's update."""
    from isda_exp.losses import CenterLoss, DisturbLabel

    join(rank, world, port)
    try:
        targets, features = global_batch()
        lo, hi = distributed.shard(len(targets), rank, world)
        disturbed = DisturbLabel(8, 10, alpha=0.5, seed=3).disturb(targets[lo:hi], epoch=2, step=7)
        center = CenterLoss(8, 10, alpha=0.5)
        for _ in range(2):  # the second update starts from non-zero centres
            center.update_centers(features[lo:hi], targets[lo:hi])
        torch.save({"disturbed": disturbed, "centers": center.centers}, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def global_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(10, (64,), generator=g), torch.randn(64, 8, generator=g, dtype=torch.float64).float()


def test_disturblabel_and_centre_loss_under_two_ranks_equal_one_process(tmp_path):
    """DisturbLabel draws for the global batch (each rank its part); the centres move by the
    global batch on every rank, as in one process."""
    from isda_exp.losses import CenterLoss, DisturbLabel

    start_ranks(loss_worker, (2, free_port(), str(tmp_path)))
    targets, features = global_batch()
    disturbed = DisturbLabel(8, 10, alpha=0.5, seed=3).disturb(targets, epoch=2, step=7)
    assert (disturbed != targets).sum() > 10  # the noise is there to compare
    center = CenterLoss(8, 10, alpha=0.5)
    for _ in range(2):
        center.update_centers(features, targets)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(torch.cat([r["disturbed"] for r in ranks]), disturbed)
    for r in ranks:
        torch.testing.assert_close(r["centers"], center.centers, rtol=1e-6, atol=1e-6)


def test_shards_and_the_split_check():
    for n in range(0, 20):
        for world in range(1, 6):
            parts = [distributed.shard(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1
    distributed.check_split(64, 256, 2)
    distributed.check_split(128, 50_000, 8)  # CIFAR: last batch 80 images = 8 x 10
    from isda_exp.errors import UserError

    with pytest.raises(UserError, match="batch_size=63 is the global batch"):
        distributed.check_split(63, 256, 2)
    with pytest.raises(UserError, match="last batch of each epoch holds 40"):
        distributed.check_split(64, 1000, 16)


def test_environment_from_torchrun_and_slurm():
    assert launch.environment({}) is None
    assert launch.environment({"WORLD_SIZE": "1", "RANK": "0"}) is None
    env = launch.environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1",
                                   "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert env == {"rank": 3, "world": 4, "local_rank": 1, "master_addr": "n1", "master_port": 1234}
    # sbatch's batch script alone (no srun step) is one process
    assert launch.environment({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}) is None
    env = launch.environment({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5",
                                   "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
                                   "SLURM_STEP_NODELIST": "gpu[007-010],big1"})
    assert env == {"rank": 5, "world": 8, "local_rank": 1, "master_addr": "gpu007",
                   "master_port": 15000 + 123456 % 20000}
    assert launch.first_host("node1,node2") == "node1"
    assert launch.first_host("a-b[3,5-6]") == "a-b3"


def test_one_process_is_untouched(tmp_path):
    """Without torchrun's or Slurm's variables nothing joins a group and nothing is wrapped."""
    assert distributed.setup("auto") == "auto" and distributed.world() == 1 and distributed.is_main()
    trainer = trainer_for("baseline", tmp_path)
    assert trainer.engine.ddp is None and trainer.engine.trained is trainer.engine.net
    assert not any(isinstance(m, CPUSyncBatchNorm2d) for m in trainer.engine.net.modules())
    assert distributed.all_sum(torch.tensor(3), 2.5) == [3.0, 2.5]


# ------------------------------------------------------------------ a failing rank


def failing_worker(rank: int, world: int, port: int, out: str) -> None:
    join(rank, world, port)
    trainer = trainer_for("baseline", Path(out) / f"run{rank}")
    tic = time.perf_counter()
    step = trainer.engine.train_step
    calls = []

    def step_that_fails_on_rank_1(x, y, ratio, *at):  # at: (epoch, step)
        calls.append(1)
        if rank == 1 and len(calls) == 2:
            raise ValueError("injected failure on rank 1")
        return step(x, y, ratio, *at)

    trainer.engine.train_step = step_that_fails_on_rank_1
    try:
        trainer.train_epoch(0)
        message = "finished"
    except Exception as e:
        message = distributed.failure_message(e)
    (Path(out) / f"rank{rank}.txt").write_text(f"{time.perf_counter() - tic:.1f}\n{message}")


@pytest.mark.slow
def test_one_rank_raising_brings_the_other_down_quickly_with_a_clear_error(tmp_path):
    ctx = start_ranks(failing_worker, (2, free_port(), str(tmp_path)), join=False)
    for p in ctx.processes:
        p.join(120)
        assert not p.is_alive(), "a rank hangs"
    seconds, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert message.startswith("error: rank 0 of 2 stopped because another rank failed"), message
    assert float(seconds) < 60  # the peer's exit is seen at the next collective, not at a timeout
    assert (tmp_path / "rank1.txt").read_text().split("\n", 1)[1] == \
        "error: rank 1 of 2 failed: ValueError: injected failure on rank 1"


# ------------------------------------------------------------------ torchrun, end to end


def torchrun(*overrides: str, cwd: Path, path: tuple[str, ...] = (), **popen) -> subprocess.Popen:
    """torchrun of 2 CPU ranks; `path`: folders put first on every rank's PYTHONPATH."""
    src = str(Path(distributed.__file__).parents[1])  # this checkout's code in every rank
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [*path, src, os.environ.get("PYTHONPATH")]))}
    cmd = [str(TORCHRUN), "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "isda_exp",
           *TINY, "device=cpu", "trainer.threads=1", "out_root=runs", *overrides]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def workers_of(proc: subprocess.Popen) -> list[int]:
    """The rank processes torchrun started (children of any of its threads)."""
    pids = set()
    for task in Path(f"/proc/{proc.pid}/task").glob("*"):
        children = task / "children"
        if children.exists():
            pids.update(int(p) for p in children.read_text().split())
    return sorted(pids)


@pytest.mark.slow
def test_torchrun_writes_once_resumes_after_kill_9_or_sigterm_and_finishes_on_every_rank(tmp_path):
    """One uninterrupted 2-rank run (a) is the reference of both interruptions:
    - kill -9 of one rank (b): the launch fails, and the same command resumes from the last
      epoch's checkpoint to exactly a's numbers; once finished, it exits 0 on every rank;
    - Slurm preemption (c): a stop signal seen by one rank only; the ranks agree (a vote every
      PAUSE_POLL_STEPS steps) to pause at the same batch, rank 0 writes the mid-epoch checkpoint,
      and the same command ends with a's numbers."""
    assert TORCHRUN.is_file(), f"{TORCHRUN} missing"
    # 30 steps an epoch (votes at 10, 20, 30), in batches of 32: an epoch takes about 2 s
    longer = ["dataset.train_size=960", "trainer.batch_size=32", "trainer.epochs=2"]
    for name in "abc":
        (tmp_path / name).mkdir()
    run = Path("runs/synthetic/resnet32/baseline/isda/seed0")
    rc, log = finish(torchrun(*longer, cwd=tmp_path / "a"))
    assert rc == 0, log
    whole = tmp_path / "a" / run
    assert len(metrics(whole)) == 2  # one writer: no line twice
    assert (whole / "train.log").read_text().count("epoch 2/2") == 1
    assert json.loads((whole / "summary.json").read_text())["world_size"] == 2

    # b: kill -9 of one rank after the first epoch's checkpoint
    proc = torchrun(*longer, cwd=tmp_path / "b")
    ckpt = tmp_path / "b" / run / "last.pt"
    wait_for(ckpt.exists, proc, timeout=240)
    os.kill(workers_of(proc)[-1], signal.SIGKILL)
    rc, log = finish(proc)
    assert rc != 0, log
    assert not (tmp_path / "b" / run / "summary.json").exists()
    done = torch.load(ckpt, weights_only=False)["epoch"]
    assert done == 1
    rc, log = finish(torchrun(*longer, cwd=tmp_path / "b"))  # the same command
    assert rc == 0, log
    assert f"after epoch {done}/2" in (tmp_path / "b" / run / "train.log").read_text()
    assert metrics(tmp_path / "b" / run) == metrics(whole)  # exactly the uninterrupted run
    rc, log = finish(torchrun(*longer, cwd=tmp_path / "b"))  # finished: nothing to do
    assert rc == 0 and "already finished" in log, log

    # c: SIGTERM to one rank only, mid-epoch
    args = [*longer, "trainer.checkpoint_minutes=1e-9"]  # a mid-epoch checkpoint at every vote
    proc = torchrun(*args, cwd=tmp_path / "c")
    ckpt = tmp_path / "c" / run / "last.pt"
    wait_for(ckpt.exists, proc, timeout=240)
    os.kill(workers_of(proc)[-1], signal.SIGTERM)  # one rank only
    rc, log = finish(proc)
    assert rc != 0, log  # the ranks end by the signal, so the launcher (and Slurm) can requeue
    text = (tmp_path / "c" / run / "train.log").read_text()
    assert text.count("stopped by SIGTERM") == 1, text
    frames = [line for line in log.splitlines() if line.strip().startswith('File "')]
    ours = str(Path(distributed.__file__).parent)
    assert not [f for f in frames if ours in f], log  # torchrun's own ChildFailedError only
    state = torch.load(ckpt, weights_only=False)
    assert state["partial"] is not None and state["partial"]["batch"] % 10 == 0, state["partial"]
    assert not (tmp_path / "c" / run / "summary.json").exists()

    rc, log = finish(torchrun(*args, cwd=tmp_path / "c"))  # the same command
    assert rc == 0, log
    batch = state["partial"]["batch"]
    assert f"in epoch {state['epoch'] + 1} at batch {batch}/30" in (tmp_path / "c" / run / "train.log").read_text()
    # the uninterrupted run's numbers; the epoch's loss sum adds the ranks' parts in another order
    resumed = metrics(tmp_path / "c" / run)
    assert len(resumed) == 2
    for got, want in zip(resumed, metrics(whole)):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-12)), key


INJECT_FAILURE = """
import os
if os.environ.get("RANK") == "1":  # torchrun's rank 1 only: its third training step raises
    from isda_exp.training import engine
    _step, _calls = engine.Engine.train_step, []

    def _failing(self, *args, **kwargs):
        _calls.append(1)
        if len(_calls) == 3:
            raise ValueError("injected failure on rank 1")
        return _step(self, *args, **kwargs)

    engine.Engine.train_step = _failing
"""


@pytest.mark.slow
def test_torchrun_one_rank_failing_ends_the_run_quickly_with_its_error(tmp_path):
    """A rank that raises ends at once (no orderly teardown that could wait on its peer), so the
    other rank stops at its next collective: the launch ends in seconds, not at the timeout."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(INJECT_FAILURE)
    (tmp_path / "a").mkdir()
    tic = time.perf_counter()
    proc = torchrun("trainer.epochs=2", "trainer.dist_timeout_s=300", cwd=tmp_path / "a",
                    path=(str(inject),))
    rc, log = finish(proc, timeout=240)
    seconds = time.perf_counter() - tic
    assert rc != 0, log
    assert "error: rank 1 of 2 failed: ValueError: injected failure on rank 1" in log, log
    assert seconds < 120, (seconds, log)  # well under the 300 s collective timeout
    run = tmp_path / "a/runs/synthetic/resnet32/baseline/isda/seed0"
    assert "injected failure on rank 1" in json.loads((run / "failed.json").read_text())["error"]
    assert not (run / "summary.json").exists()


@pytest.mark.slow
def test_torchrun_with_a_batch_that_does_not_split_says_so(tmp_path):
    rc, log = finish(torchrun("trainer.batch_size=63", cwd=tmp_path), timeout=180)
    assert rc != 0
    assert "error: trainer.batch_size=63 is the global batch and must split evenly across 2 " \
           "ranks" in log, log
