"""One training run: build from the config, train epoch by epoch, checkpoint, resume, summarise."""
from __future__ import annotations

import contextlib
import logging
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from . import runfiles
from .augment import normalize
from .build import (build_criterion, build_data, build_model, build_optimizer, run_length,
                    science_config)
from .data import TrainStream, mix_seed, resolve_workers
from .errors import UserError
from .isda import isda_ratio
from .losses import loss_name

log = logging.getLogger("isda_exp")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is available here; use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None


class Trainer:
    """Holds the run's objects; `fit()` trains from scratch or from the run's checkpoint."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        t = cfg.trainer
        if t.precision not in PRECISIONS:
            raise UserError(f"trainer.precision={t.precision} is unknown: use fp32, bf16 or fp16")
        if int(t.eval_batch_size) < 1:
            raise UserError(f"trainer.eval_batch_size={t.eval_batch_size} must be >= 1 (e.g. 1024)")
        if t.threads:
            torch.set_num_threads(int(t.threads))
        self.device = resolve_device(str(cfg.device))
        self.epochs, self.batch_size = run_length(cfg)
        self.seed = int(cfg.seed)
        torch.manual_seed(mix_seed(self.seed, 0, 0))

        self.data = build_data(cfg)
        self.net, self.fc = build_model(cfg, self.data.num_classes)
        self.criterion = build_criterion(cfg, self.net.feature_dim, self.data.num_classes)
        self.net.to(self.device)
        self.fc.to(self.device)
        self.criterion.to(self.device)
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.compiled = self._compiled(self.net) if t.compile else None
        self.proven_shapes: set[tuple] = set()  # batch shapes whose compiled step has run
        params = list(self.net.parameters()) + list(self.fc.parameters())
        self.optimizer, self.scheduler = build_optimizer(cfg, params, self.epochs)
        self.amp_dtype = PRECISIONS[t.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark)
        self.stream = TrainStream(self.data, cfg.aug.name, int(cfg.aug.cutout_length),
                                  self.batch_size, self.seed, self.device,
                                  resolve_workers(t.num_workers))
        self.x_test = self.data.x_test.to(self.device)
        self.y_test = self.data.y_test.to(self.device)

    def _compiled(self, net):
        try:
            return torch.compile(net)
        except Exception as e:  # unsupported platform or Python version, ...
            warnings.warn(f"torch.compile unavailable ({e}); training uncompiled")
            return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's features: compiled when trainer.compile=true and compiling works.

        torch.compile compiles lazily, at the first call of each new shape or mode, so a missing
        compiler shows up here: warn once and go on with the eager model.
        """
        if self.compiled is None:
            return self.net(x)
        try:
            return self.compiled(x)
        except Exception as e:  # compilation failed: the compiled graph has not run
            self._uncompile(e)
            return self.net(x)

    def _uncompile(self, error: Exception) -> None:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        warnings.warn(f"torch.compile failed ({type(error).__name__}: {first}); "
                      "falling back to the uncompiled model")
        self.compiled = None

    # ------------------------------------------------------------ steps

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _inputs(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return normalize(x_uint8).contiguous(memory_format=self.memory_format)

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training set; lambda is fixed within the epoch."""
        self.net.train()
        torch.manual_seed(mix_seed(self.seed, epoch, 3))  # dropout, shake-shake: a function of the epoch
        ratio = self.ratio(epoch)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        wrong = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        bar = tqdm(self.stream.epoch(epoch), total=len(self.stream), leave=False,
                   desc=f"epoch {epoch + 1}/{self.epochs}", disable=not self.cfg.trainer.progress)
        for step, (x, y) in enumerate(bar):
            loss, logits = self.train_step(x, y, ratio, epoch, step)
            loss_sum += loss.double() * len(y)
            wrong += (logits.argmax(1) != y).sum()
            seen += len(y)
        return {"train_loss": loss_sum.item() / seen, "train_error": 100.0 * wrong.item() / seen,
                "lambda": ratio}

    def train_step(self, x: torch.Tensor, y: torch.Tensor, ratio: float, epoch: int = 0, step: int = 0):
        """One SGD step on a batch of augmented uint8 images; returns the detached (loss, logits).

        The backward pass of a compiled model is compiled at its first run, so the first step of
        each new batch shape is guarded: if it fails, its side effects (BatchNorm and ISDA
        statistics, RNG) are undone and the step is redone with the eager model.
        """
        shape = tuple(x.shape)
        if self.compiled is None or shape in self.proven_shapes:
            return self._step(x, y, ratio, epoch, step)
        saved = self._snapshot()
        try:
            out = self._step(x, y, ratio, epoch, step)
        except Exception as e:
            if self.compiled is None:  # the forward already fell back: not a compile error
                raise
            self._restore(saved)
            self._uncompile(e)
            return self._step(x, y, ratio, epoch, step)
        self.proven_shapes.add(shape)
        return out

    def _step(self, x, y, ratio, epoch=0, step=0):
        with self._autocast():
            features = self.forward(self._inputs(x))
            loss, logits = self.criterion(features, self.fc, y, ratio, epoch=epoch, step=step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), logits.detach()

    def _snapshot(self) -> dict:
        """What a failed first step may have changed before its backward pass."""
        return {"net": {k: v.clone() for k, v in self.net.state_dict().items()},
                "isda": {k: v.clone() for k, v in self.criterion.state_dict().items()},
                "rng": rng_states()}

    def _restore(self, saved: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.net.load_state_dict(saved["net"])
        self.criterion.load_state_dict(saved["isda"])
        set_rng_states(saved["rng"])

    @torch.inference_mode()
    def evaluate(self) -> dict:
        """Plain logits on the unaugmented test set, in large batches."""
        self.net.eval()
        loss_sum, wrong = 0.0, 0
        step = int(self.cfg.trainer.eval_batch_size)
        for i in range(0, len(self.y_test), step):
            x, y = self.x_test[i:i + step], self.y_test[i:i + step]
            with self._autocast():
                logits = self.fc(self.forward(self._inputs(x))).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            wrong += (logits.argmax(1) != y).sum().item()
        n = len(self.y_test)
        return {"test_loss": loss_sum / n, "test_error": 100.0 * wrong / n}

    def ratio(self, epoch: int) -> float:
        isda = self.cfg.isda
        if isda.loss is None:  # lambda is ISDA's; the other losses ignore it
            return 0.0
        return isda_ratio(float(isda.lambda_0), epoch, self.epochs, constant=bool(isda.constant))

    # ------------------------------------------------------------ state

    def state(self, epoch: int, history: list[dict], wall: float) -> dict:
        return {
            "epoch": epoch, "history": history, "wall_time": wall, "config": science_config(self.cfg),
            "model": self.net.state_dict(), "classifier": self.fc.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "isda": self.criterion.state_dict(),  # ISDA's statistics, the centre loss's centres, ...
            "scaler": self.scaler.state_dict(), "rng": rng_states(),
        }

    def load_state(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["model"])
        self.fc.load_state_dict(ckpt["classifier"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["isda"] is not None:  # None: a plain-CE checkpoint from before the loss group
            self.criterion.load_state_dict(ckpt["isda"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_states(ckpt["rng"])

    # ------------------------------------------------------------ the run

    def fit(self) -> dict:
        ckpt_path = self.run_dir / runfiles.CHECKPOINT
        start, history, wall = 0, [], 0.0
        if ckpt_path.exists():
            ckpt = runfiles.load_checkpoint(ckpt_path)
            self.load_state(ckpt)
            start, history, wall = ckpt["epoch"], ckpt["history"], ckpt["wall_time"]
            log.info(f"resuming {self.run_dir} after epoch {start}/{self.epochs}")
        (self.run_dir / runfiles.FAILED).unlink(missing_ok=True)
        metrics = runfiles.MetricsLog(self.run_dir, history, bool(self.cfg.trainer.tensorboard))
        try:
            for epoch in range(start, self.epochs):
                tic = time.perf_counter()
                row = {"epoch": epoch + 1, **self.train_epoch(epoch), **self.evaluate(),
                       "lr": self.optimizer.param_groups[0]["lr"], "eval_split": self.data.eval_split}
                self.scheduler.step()
                row["seconds"] = time.perf_counter() - tic
                wall += row["seconds"]
                history.append(row)
                metrics.append(row)
                runfiles.save_checkpoint(ckpt_path, self.state(epoch + 1, history, wall))
                log.info(f"epoch {epoch + 1}/{self.epochs}  train loss {row['train_loss']:.4f} "
                         f"err {row['train_error']:.2f}%  test loss {row['test_loss']:.4f} "
                         f"err {row['test_error']:.2f}%  lr {row['lr']:.4g}  lambda "
                         f"{row['lambda']:.3f}  {row['seconds']:.1f}s")
        finally:
            metrics.close()
        summary = self.summary(history, wall)
        runfiles.write_json(self.run_dir / runfiles.SUMMARY, summary)
        return summary

    def summary(self, history: list[dict], wall: float) -> dict:
        errors = [r["test_error"] for r in history]
        cfg = self.cfg
        return {
            "test_error_last10": float(np.mean(errors[-10:])), "test_error_final": errors[-1],
            "test_error_best": min(errors), "epochs": self.epochs,
            "recipe_epochs": int(cfg.model.recipe.epochs), "batch_size": self.batch_size,
            "seed": self.seed, "dataset": cfg.dataset.name, "model": cfg.model.name,
            "aug": cfg.aug.name, "method": cfg.loss.name if cfg.isda.loss is None else "isda",
            "variant": None if cfg.isda.loss is None else variant_name(cfg.isda),
            "loss": loss_name(cfg.loss._target_),
            "drop_rate": float(cfg.model.net.get("drop_rate") or 0.0),
            "lambda_0": float(cfg.isda.lambda_0), "train_size": len(self.data.y_train),
            "test_size": len(self.y_test), "eval_split": self.data.eval_split,
            "precision": cfg.trainer.precision,
            "threads": torch.get_num_threads(),
            "wall_time": wall, "torch_version": torch.__version__, "device": device_name(self.device),
        }


def variant_name(isda: DictConfig) -> str:
    return "constant" if isda.constant else str(isda.loss.covariance)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
