"""One run over several processes (DistributedDataParallel), started by torchrun or by Slurm.

`setup()` joins the process group when the environment says this process is one rank of several:
torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), else those of a
Slurm step started by srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID, the first node of
SLURM_STEP_NODELIST as the master, a port derived from the job id). Without them (a plain
`python -m isda_exp`) it does nothing and every helper here answers "one process".

NCCL on CUDA, gloo on the CPU. Every collective has a bounded timeout, so a rank that stops or
hangs brings the others down with an error instead of leaving them waiting forever.
"""
from __future__ import annotations

import atexit
import datetime
import logging
import os
import re
import sys

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError
from .device import resolve_device
from .launch import environment

log = logging.getLogger("isda_exp")


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 (or the one process): the only writer of metrics, checkpoints, summaries, logs."""
    return rank() == 0


def setup(device: str, timeout_s: float = 600) -> str:
    """Join the process group if launched as several ranks; returns the device this rank uses.

    device auto|cuda -> cuda:LOCAL_RANK (NCCL) when CUDA is present, cpu -> gloo. Idempotent (a
    sweep runs several jobs in one process).
    """
    env = environment()
    if env is None:
        return device
    resolved = resolve_device(device, env["local_rank"])
    cuda = resolved.type == "cuda"
    if cuda:
        torch.cuda.set_device(resolved.index)
    device = str(resolved)
    if dist.is_initialized():
        return device
    os.environ.setdefault("MASTER_ADDR", env["master_addr"])
    os.environ.setdefault("MASTER_PORT", str(env["master_port"]))
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", rank=env["rank"],
                            world_size=env["world"], timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(shutdown)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave(code: int) -> None:
    """End this rank now after an error, without the process group's orderly teardown.

    destroy_process_group (run at exit) can wait on a collective that a peer will never join, so
    a failed rank could hold its sockets open until the timeout; ending at once closes them and
    the other ranks stop at their next collective. The run's files are already closed (the
    trainer's `finally`); one process simply exits.
    """
    if world() < 2:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def failure_message(error: BaseException) -> str:
    """One line for a rank's error; a lost peer says so, since its own error is the cause."""
    text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    peer = isinstance(error, getattr(dist, "DistError", ())) or re.search(
        r"gloo|nccl|connection|closed|timed? ?out|watchdog|peer", str(error), re.I)
    where = f"rank {rank()} of {world()}"
    if peer:
        return (f"error: {where} stopped because another rank failed or stopped ({text[:300]}); "
                "the first rank's error is in failed.json and its log")
    return f"error: {where} failed: {text[:500]}"


# ---------------------------------------------------------------- splitting the work


def shard(n: int, rank_: int, world_: int) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous part of n items (sizes differ by at most one)."""
    base, extra = divmod(n, world_)
    lo = rank_ * base + min(rank_, extra)
    return lo, lo + base + (rank_ < extra)


def check_split(batch_size: int, train_size: int, world_: int) -> None:
    """The recipe's batch is the global batch: every rank must get an equal share of every batch
    (equal shares make DDP's mean of the ranks' mean losses the one-process mean loss)."""
    if world_ < 2:
        return
    if batch_size % world_:
        raise UserError(f"trainer.batch_size={batch_size} is the global batch and must split evenly "
                        f"across {world_} ranks; use a batch size divisible by {world_} or another "
                        "number of processes")
    last = train_size % batch_size
    if last % world_:
        raise UserError(f"the last batch of each epoch holds {last} of the {train_size} training "
                        f"images, which does not split evenly across {world_} ranks; use a number "
                        f"of ranks dividing {last}, or a dataset.train_subset leaving a divisible "
                        "last batch")


def all_sum(*values) -> list[float]:
    """Sum numbers (Python or 0-d tensors) over ranks in one float64 collective; exact for counts
    below 2**53."""
    return _all_reduce(values, "sum")


def all_max(*values) -> list[float]:
    """The largest of each number over ranks, in one collective (e.g. a stop signal any rank got)."""
    return _all_reduce(values, "max")


def _all_reduce(values, op: str) -> list[float]:
    if world() < 2:
        return [float(v) for v in values]
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(device) for v in values])
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def all_union(items: list[str]) -> list[str]:
    """The sorted union of every rank's strings (e.g. the bad files each rank found)."""
    if world() < 2:
        return sorted(set(items))
    gathered: list = [None] * world()
    dist.all_gather_object(gathered, list(items))
    return sorted({item for part in gathered for item in part})


# ---------------------------------------------------------------- models


class Pair(nn.Module):
    """The feature extractor and the classifier as one module for DDP: forward gives the features;
    the loss (ISDA's or cross-entropy) uses the classifier itself, and its gradients are averaged
    with the network's."""

    def __init__(self, net: nn.Module, fc: nn.Module):
        super().__init__()
        self.net, self.fc = net, fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def wrap(module: nn.Module, device: torch.device) -> nn.Module | None:
    """DistributedDataParallel around `module` when several ranks run, else None.

    Buffers (BatchNorm running statistics) are broadcast from rank 0 at each training forward,
    as the authors' DataParallel kept the first replica's.
    """
    if world() < 2:
        return None
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)
