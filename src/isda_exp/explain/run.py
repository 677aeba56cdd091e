"""A run directory as data: its composed config and its newest loadable checkpoint."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from .. import rundir
from ..errors import UserError
from ..rundir.identity import is_segmentation
from ..rundir.moved import current_targets

HYDRA_CONFIG = Path(".hydra") / "config.yaml"
EXPLAIN = "explain"


@dataclass
class RunSnapshot:
    """What explain needs from a run: where it is, its config, its checkpoint and that file's id."""

    path: Path
    cfg: DictConfig
    checkpoint: dict
    checkpoint_path: Path
    checkpoint_id: str  # epoch + content hash: the key of the feature cache

    @property
    def out(self) -> Path:
        return self.path / EXPLAIN


def load_run(run_dir: str | Path, overrides: list[str] | None = None) -> RunSnapshot:
    """The run in `run_dir`; `overrides` (key=value) fix what moved, e.g. dataset.npz=PATH.

    .hydra/config.yaml is the full composed config (data paths included); run_config.json holds
    only the parts that change results, without the data's location, so it cannot rebuild the data.
    """
    path = Path(run_dir).expanduser().resolve()
    if not path.is_dir():
        raise UserError(f"{run_dir} is not a directory; pass the folder of one run, e.g. "
                        "outputs/runs/cifar10/resnet32/baseline/isda/seed0")
    cfg = read_config(path)
    if is_segmentation(cfg):  # per-pixel features of two heads: not what explain's figures read
        raise UserError(f"{path} is a segmentation run: explain reads classification runs (pooled "
                        "features, one classifier); report segmentation runs with "
                        "python -m isda_exp.report DIR --table 7")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} must be KEY=VALUE, e.g. --set dataset.npz=data/cifar10.npz")
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)  # "null" -> None, "8" -> 8
    latest = rundir.load_latest(path)
    if latest is None:
        raise UserError(f"{path} has no checkpoint ({rundir.CHECKPOINT} or {rundir.PREVIOUS}); "
                        "explain needs a trained model: let the run finish its first epoch, or "
                        "pass another run directory")
    checkpoint, ckpt_path = latest
    return RunSnapshot(path, cfg, checkpoint, ckpt_path, checkpoint_id(checkpoint))


def read_config(path: Path) -> DictConfig:
    config = path / HYDRA_CONFIG
    if not config.is_file():
        has_run_files = any((path / f).exists() for f in (rundir.CONFIG, rundir.CHECKPOINT))
        hint = (f"it has {rundir.CONFIG} but not the composed config {HYDRA_CONFIG} (which holds "
                "the data's location); train it through `python -m isda_exp` or restore .hydra/"
                if has_run_files else "pass the folder of one run (it holds .hydra/config.yaml "
                "and last.pt), e.g. outputs/runs/cifar10/resnet32/baseline/isda/seed0")
        raise UserError(f"{path} is not a run directory: {hint}")
    try:
        # a run trained before a module moved names it as it is now (interpolations kept)
        cfg = OmegaConf.create(current_targets(OmegaConf.to_container(OmegaConf.load(config))))
    except Exception as e:  # a YAML error
        raise UserError(f"cannot read {config} ({type(e).__name__}: {e}); restore it from the "
                        "run's Hydra record") from None
    missing = [k for k in ("model", "dataset", "isda", "loss", "trainer") if k not in cfg]
    if missing:
        raise UserError(f"{config} is not an isda_exp run config (no {', '.join(missing)}); "
                        "pass the folder of one isda_exp run")
    return cfg


def checkpoint_id(checkpoint: dict) -> str:
    """'e<epoch>[b<batch>]-<hash of the weights and criterion state>': changes with the weights.

    Hashed from the loaded tensors, not the file, so a trainer replacing last.pt meanwhile
    cannot pair one checkpoint's features with another's name.
    """
    digest = hashlib.sha256()
    for part in ("model", "classifier", "isda"):
        state = checkpoint.get(part) or {}
        for name in sorted(state):
            value = state[name]
            digest.update(name.encode())
            if torch.is_tensor(value):
                digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            else:
                digest.update(repr(value).encode())
    partial = checkpoint.get("partial")
    where = f"e{int(checkpoint['epoch'])}" + (f"b{int(partial['batch'])}" if partial else "")
    return f"{where}-{digest.hexdigest()[:12]}"
