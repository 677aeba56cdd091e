"""Which multi-process launch started this process (torchrun, or a Slurm step of several tasks),
read from the environment alone: no torch, so a one-process run knows it has no ranks to join
before importing anything heavy (isda_exp.parallel.distributed joins them)."""
from __future__ import annotations

import os
import re

from ..errors import UserError


def environment(env=os.environ) -> dict | None:
    """{rank, world, local_rank, master_addr, master_port} of a multi-process launch, else None."""
    if "WORLD_SIZE" in env and "RANK" in env:  # torchrun (or any env:// launcher)
        size = int(env["WORLD_SIZE"])
        if size < 2:
            return None
        return {"rank": int(env["RANK"]), "world": size, "local_rank": int(env.get("LOCAL_RANK", 0)),
                "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
                "master_port": int(env.get("MASTER_PORT", 29500))}
    tasks = env.get("SLURM_STEP_NUM_TASKS")  # set by srun for each task of a step, not by sbatch
    if tasks and int(tasks) > 1 and "SLURM_PROCID" in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") \
            or env.get("SLURM_NODELIST") or "127.0.0.1"
        job = int(env.get("SLURM_JOB_ID", 0) or 0)
        return {"rank": int(env["SLURM_PROCID"]), "world": int(tasks),
                "local_rank": int(env.get("SLURM_LOCALID", 0)),
                "master_addr": env.get("MASTER_ADDR") or first_host(nodes),
                "master_port": int(env.get("MASTER_PORT") or 15000 + job % 20000)}
    return None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise UserError(f"cannot read the Slurm node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = m.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix
