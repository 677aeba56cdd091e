"""Segmentation under torch.distributed (gloo, 2 forked ranks): per-pixel ISDA's statistics over the
global batch equal one process's (the authors' per-rank statistics, as an option, equal one process
on each rank's own pixels), and a 2-rank segmentation run with synchronised BatchNorm equals the
one-process run of the same global batch, iteration by iteration."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir

from conftest import free_port, start_ranks
from isda_exp.losses import PixelISDA
from isda_exp.parallel import distributed
from isda_exp.paths import config_dir

A, C = 5, 3


def pixel_batches():
    """(features [4, A, 3, 4], labels [4, 6, 8]) per step; rank r takes images 2r, 2r+1."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for step in range(3):
        labels = torch.randint(0, C, (4, 6, 8), generator=gen)
        labels[:, :2, :2] = 255
        if step == 1:
            labels[2:] = torch.where(labels[2:] == 0, 255, labels[2:])  # class 0 on rank 0 alone
        out.append((torch.randn(4, A, 3, 4, generator=gen, dtype=torch.float64) + 2, labels))
    return out


def make(statistics):
    torch.manual_seed(0)
    return PixelISDA(A, C, statistics=statistics).double(), torch.nn.Conv2d(A, C, 1).double()


def pixel_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for statistics in ("global", "per_rank"):
            isda, conv = make(statistics)
            augs = [isda(f[2 * rank:2 * rank + 2], conv, y[2 * rank:2 * rank + 2], 1.5)[0].detach()
                    for f, y in pixel_batches()]
            results[statistics] = (isda.state_dict(), augs)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_pixel_isda_statistics_are_global_by_default_and_per_rank_as_the_authors(tmp_path):
    start_ranks(pixel_worker, (2, str(tmp_path / "init"), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    whole, conv = make("global")
    for f, y in pixel_batches():  # one process, the global batch: the statistics
        whole(f, conv, y, 1.5)
    own = []
    for r in range(2):  # one process, one rank's images only: the authors' per-GPU estimator
        isda, conv = make("global")
        augs = [isda(f[2 * r:2 * r + 2], conv, y[2 * r:2 * r + 2], 1.5)[0].detach()
                for f, y in pixel_batches()]
        own.append((isda.state_dict(), augs))
    for r in range(2):
        state, _ = ranks[r]["global"]
        for key, value in whole.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-12, atol=1e-12)
        state, augs = ranks[r]["per_rank"]
        for key, value in own[r][0].items():
            torch.testing.assert_close(state[key], value, rtol=1e-12, atol=1e-12)
        for a, b in zip(augs, own[r][1]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.equal(ranks[0]["per_rank"][0]["isda.counts"], ranks[1]["per_rank"][0]["isda.counts"])


RUN = ["dataset=seg_synthetic", "model=deeplabv3_tiny", "isda=diagonal", "isda.lambda_0=2.5",
       "dataset.train_size=16", "dataset.test_size=3", "trainer.batch_size=4", "trainer.iterations=5",
       "trainer.log_every=1", "trainer.checkpoint_every=100", "trainer.progress=false",
       "trainer.num_workers=0", "trainer.threads=1", "trainer.sync_bn=true", "device=cpu",
       "trainer.tensorboard=false", "dataset.evaluation.scales=[1.0]", "dataset.evaluation.flip=false"]


def float64_run(run_dir: Path) -> dict:
    """The run in float64 without dropout (each rank would draw its own): history and statistics."""
    from isda_exp.training.seg_trainer import SegTrainer

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=RUN)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        trainer = SegTrainer(cfg, run_dir)
    finally:
        torch.set_default_dtype(default)
    engine = trainer.engine
    for m in engine.net.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
            m.p = 0.0
    normalised = engine.normalised
    engine.normalised = lambda x, boxes=None: normalised(x, boxes).double()
    summary = trainer.fit()
    return {"history": trainer.history, "isda": engine.criterion.state_dict(), "miou": summary["miou"]}


def run_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.setup("cpu", 60)
    try:
        torch.save(float64_run(Path(out) / "ranks"), Path(out) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def test_two_ranks_with_sync_bn_equal_one_process(tmp_path):
    start_ranks(run_worker, (2, free_port(), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    one = float64_run(tmp_path / "one")
    losses = [r["train_loss"] for r in one["history"] if "train_loss" in r]
    assert len(losses) == 5
    for part in ranks:
        got = [r["train_loss"] for r in part["history"] if "train_loss" in r]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(losses), rtol=1e-9, atol=0)
        for key, value in one["isda"].items():
            torch.testing.assert_close(part["isda"][key], value, rtol=1e-9, atol=1e-9)
        assert part["miou"] == one["miou"]
    assert int(one["isda"]["isda.0.isda.counts"].sum()) > 0
