"""The one place a `device=` value becomes a torch.device (one process, or one rank of several),
and where `trainer.precision=auto` learns what the device computes natively."""
from __future__ import annotations

import torch

from ..errors import UserError


def resolve_device(name: str, local_rank: int | None = None, flag: str = "device=") -> torch.device:
    """auto|cpu|cuda|cuda:N -> the device; under several ranks (`local_rank` given) auto and cuda
    mean this rank's GPU (local rank modulo the GPUs visible), and cuda:N is refused. `flag`: how
    the caller's user spells the setting in the error lines (a Hydra key, or a --flag)."""
    name = str(name)
    if local_rank is not None and name.startswith("cuda:"):
        raise UserError(f"{flag}{name} under a multi-process launch: each rank uses the GPU of "
                        "its local rank; use device=auto or device=cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{flag}{name} but no CUDA device is available here; use {flag}cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank % torch.cuda.device_count()}"  # one GPU visible per task works too
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None


def device_name(device: torch.device) -> str:
    """The device as a summary records it: the GPU's model, or cpu."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 is emulated (on an AVX2 CPU about 10x slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool(set(cpu_flags()) & {"avx512_bf16", "amx_bf16"})


def cpu_flags() -> list[str]:
    """The CPU's feature flags as Linux lists them (/proc/cpuinfo); [] where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def resolve_precision(precision: str, device: torch.device) -> str:
    """trainer.precision as a run trains with it: auto -> bf16 where the device has native bf16,
    else fp32; fp32, bf16 and fp16 as given."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"
