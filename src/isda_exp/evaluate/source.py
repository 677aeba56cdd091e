"""What is evaluated: a run directory's model (its checkpoint, its config) or a weights file in
an architecture of the zoo, each with the data source and engine its config builds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from .. import rundir
from ..errors import UserError
from ..explain.run import read_config
from ..models.pretrained import load_pretrained
from ..parallel.device import resolve_device
from ..paths import config_dir
from ..training.build import build_data, build_model
from ..training.engine import Engine


@dataclass
class Evaluated:
    """The model, the data and how to run it: what `metrics.evaluate` needs."""

    cfg: DictConfig
    engine: Engine
    data: object  # the DataSource (image folder or arrays)
    batch_size: int
    what: str  # the run directory or the weights file, for the printout


def from_run(run_dir: str, overrides: list[str] = (), device: str = "auto",
             batch_size: int | None = None) -> Evaluated:
    """The run's newest loadable checkpoint, evaluated as its own test pass does.
    `overrides` (KEY=VALUE) fix what moved, e.g. dataset.root=DIR."""
    path = Path(run_dir).expanduser().resolve()
    if not path.is_dir():
        raise UserError(f"{run_dir} is not a directory: pass a run directory, or --weights FILE")
    cfg = read_config(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} must be KEY=VALUE, e.g. --set dataset.root=DIR")
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    latest = rundir.load_latest(path)
    if latest is None:
        raise UserError(f"{path} has no checkpoint ({rundir.CHECKPOINT}): nothing to evaluate yet")
    checkpoint, _ = latest
    data = build_data(cfg)
    net, fc = build_model(cfg, data.num_classes, pretrained=False)  # the checkpoint's weights
    try:
        net.load_state_dict(checkpoint["model"])
        fc.load_state_dict(checkpoint["classifier"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise UserError(f"the checkpoint does not fit the model of {path}'s config ({first}); "
                        "was .hydra/config.yaml or a --set override changed?") from None
    return _evaluated(cfg, net, fc, data, device, batch_size, str(path))


def from_weights(weights: str, model: str, data_root: str, overrides: list[str] = (),
                 device: str = "auto", batch_size: int | None = None) -> Evaluated:
    """`weights` (model.pretrained: a file or a library name) in `model`, on the image folder
    `data_root` (its val/ split), with the config's evaluation transform; `overrides` are Hydra
    overrides (model.arch=convnext_nano, dataset.eval_crop=288, ...). The weights' classifier
    must fit the folder's classes."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        try:
            cfg = compose("train", overrides=[f"model={model}", "dataset=folder",
                                              f"dataset.root={data_root}",
                                              f"model.pretrained={weights}", *overrides])
        except Exception as e:  # an unknown model choice or key: Hydra's message, first line
            raise UserError(f"cannot compose the config: {str(e).strip().splitlines()[0]}") from None
    data = build_data(cfg)
    net, fc = build_model(cfg, data.num_classes, pretrained=False)
    loaded = load_pretrained(net, fc, str(weights))
    if not loaded["classifier"].startswith("loaded"):
        raise UserError(f"the weights {weights} hold no classifier for the {data.num_classes} "
                        f"classes of {data.root} (classifier {loaded['classifier']}): evaluation "
                        "needs the weights' own classifier; fine-tune them instead (experiment=finetune)")
    return _evaluated(cfg, net, fc, data, device, batch_size, str(weights))


def _evaluated(cfg, net, fc, data, device: str, batch_size, what: str) -> Evaluated:
    dev = resolve_device(str(device))
    net.to(dev), fc.to(dev)
    t = cfg.trainer
    norm = (data.mean, data.std) if hasattr(data, "mean") else None
    precision = "fp32" if t.precision == "auto" else str(t.precision)
    engine = Engine(net, fc, None, None, dev, precision, bool(t.channels_last), False, norm)
    if hasattr(data, "num_workers"):  # an image folder: decode with the run's worker count
        from ..data.streams import resolve_workers

        data.num_workers = resolve_workers(t.get("num_workers", 0))
    return Evaluated(cfg, engine, data, int(batch_size or t.eval_batch_size), what)
