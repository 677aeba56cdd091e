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

from . import distributed, preempt, runfiles
from .augment import normalize
from .build import (build_criterion, build_data, build_model, build_optimizer, run_length,
                    science_config)
from .data import TrainStream, mix_seed, resolve_workers
from .errors import UserError
from .isda import isda_ratio
from .losses import loss_name

log = logging.getLogger("isda_exp")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FINITE_CHECK_STEPS = 100  # a non-finite loss is looked for every this many steps (one host sync)
PAUSE_POLL_STEPS = 10  # under DDP, the ranks agree on a stop or a periodic checkpoint this often


class Diverged(UserError):
    """The training loss or the weights became non-finite; failed.json is written already."""

    recorded = True


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
        distributed.check_split(self.batch_size, len(self.data.y_train), distributed.world())
        self.net, self.fc = build_model(cfg, self.data.num_classes)
        if t.get("sync_bn") and distributed.world() > 1:  # else per-rank BN, as the authors ran
            self.net = distributed.sync_batchnorm(self.net, self.device)
        self.criterion = build_criterion(cfg, self.net.feature_dim, self.data.num_classes)
        self.net.to(self.device)
        self.fc.to(self.device)
        self.criterion.to(self.device)
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.ddp = distributed.wrap(distributed.Pair(self.net, self.fc), self.device)  # None: 1 rank
        self.trained = self.net if self.ddp is None else self.ddp  # what a training step calls
        self.compiled = self._compiled(self.trained) if t.compile else None
        self.proven_shapes: set[tuple] = set()  # batch shapes whose compiled step has run
        params = list(self.net.parameters()) + list(self.fc.parameters())
        self.optimizer, self.scheduler = build_optimizer(cfg, params, self.epochs)
        self.amp_dtype = PRECISIONS[t.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark)
        self.stream = TrainStream(self.data, cfg.aug.name, int(cfg.aug.cutout_length),
                                  self.batch_size, self.seed, self.device,
                                  resolve_workers(t.num_workers),
                                  distributed.rank(), distributed.world())
        self.x_test = self.data.x_test.to(self.device)
        self.y_test = self.data.y_test.to(self.device)
        self.history, self.wall, self.last_save, self.epoch_seconds = [], 0.0, time.monotonic(), 0.0
        minutes = t.get("checkpoint_minutes")  # read once: the step loop polls it after every step
        self.checkpoint_seconds = 60 * float(minutes) if minutes else None

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
        eager = self.trained if torch.is_grad_enabled() else self.net
        if self.compiled is None or eager is not self.trained:  # under DDP the test pass is eager
            return eager(x)
        try:
            return self.compiled(x)
        except Exception as e:  # compilation failed: the compiled graph has not run
            self._uncompile(e)
            return eager(x)

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

    def train_epoch(self, epoch: int, resume: dict | None = None) -> dict:
        """One pass over the training set; lambda is fixed within the epoch.

        `resume` (a mid-epoch checkpoint's "partial") continues the epoch at its batch. The loop
        polls for a stop signal and the periodic checkpoint after each step (no device sync)
        and looks for a non-finite loss every FINITE_CHECK_STEPS steps.
        """
        self.net.train()
        if resume is None:  # else the checkpoint restored the RNG as it was at that batch
            # dropout, shake-shake: a function of the epoch (and of the rank, when several train)
            ranked = [distributed.rank()] if self.ddp is not None else []
            torch.manual_seed(mix_seed(self.seed, epoch, 3, *ranked))
        ratio = self.ratio(epoch)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        wrong = torch.zeros((), device=self.device, dtype=torch.int64)
        seen, first, earlier = 0, 0, 0.0
        if resume is not None:
            first, earlier = int(resume["batch"]), float(resume["seconds"])
            if distributed.is_main():  # the checkpoint holds the global sums: counted once
                loss_sum += resume["loss_sum"].to(self.device)
                wrong += resume["wrong"].to(self.device)
                seen = int(resume["seen"])
        losses = torch.full((len(self.stream),), float("nan"), device=self.device)  # per step: names the step that went bad
        tic = time.perf_counter()
        bar = tqdm(self.stream.epoch(epoch, first), total=len(self.stream), initial=first, leave=False,
                   desc=f"epoch {epoch + 1}/{self.epochs}",
                   disable=not self.cfg.trainer.progress or not distributed.is_main())
        for b, (x, y) in enumerate(bar, start=first):
            loss, logits = self.train_step(x, y, ratio, epoch, b)
            loss_sum += loss.double() * len(y)
            losses[b] = loss.detach().float()
            wrong += (logits.argmax(1) != y).sum()
            seen += len(y)
            if (b + 1) % FINITE_CHECK_STEPS == 0:
                self._check_loss(epoch, loss_sum, losses, first, b + 1)
            if self._pause_due(b + 1):
                self._check_loss(epoch, loss_sum, losses, first, b + 1)
                self._save_partial(epoch, self._partial(b + 1, loss_sum, wrong, seen,
                                                        earlier + time.perf_counter() - tic))
        self._check_loss(epoch, loss_sum, losses, first, len(self.stream))
        self.epoch_seconds = earlier  # the part of this epoch trained before a resume
        loss_sum, wrong, seen = distributed.all_sum(loss_sum, wrong, seen)  # the global batch
        return {"train_loss": loss_sum / seen, "train_error": 100.0 * wrong / seen,
                "lambda": ratio}

    # ------------------------------------------------------------ faults

    def _check_loss(self, epoch: int, loss_sum, losses, first: int, done: int) -> None:
        """Stop on a non-finite loss: one host sync, the step found only when it is needed."""
        if torch.isfinite(loss_sum).item():
            return
        bad = (~torch.isfinite(losses[first:done])).nonzero()
        step = first + int(bad[0]) if len(bad) else done - 1
        self._diverged(epoch, step + 1, f"train loss {float(losses[step])}")

    def _check_weights(self, epoch: int, step: int) -> None:
        params = [*self.net.parameters(), *self.fc.parameters()]
        if not torch.stack([p.detach().isfinite().all() for p in params]).all().item():
            self._diverged(epoch, step, "non-finite weights")

    def _diverged(self, epoch: int, step: int, what: str):
        t = self.cfg.trainer
        kept = "the last good checkpoint last.pt is kept" if (self.run_dir / runfiles.CHECKPOINT).exists() \
            else "no checkpoint was written"
        advice = f"a lower model.recipe.lr (now {self.cfg.model.recipe.lr})"
        if self.cfg.isda.loss is not None:
            advice += f" or isda.lambda_0 (now {self.cfg.isda.lambda_0})"
        msg = (f"training diverged in epoch {epoch + 1}/{self.epochs} at step {step}/{len(self.stream)} "
               f"({what}); {kept}. Try {advice}, in a new out_root=DIR")
        runfiles.write_json(self.run_dir / runfiles.FAILED, {
            "error": msg, "reason": "diverged", "epoch": epoch + 1, "step": step, "what": what,
            "precision": t.precision})
        raise Diverged(msg)

    def _checkpoint_due(self) -> bool:
        return self.checkpoint_seconds is not None and \
            time.monotonic() - self.last_save >= self.checkpoint_seconds

    def _pause_due(self, done: int) -> bool:
        """A stop signal or the periodic checkpoint, after `done` steps of the epoch.

        One process polls after every step (a Python check). Under DDP every rank must pause at
        the same step, so the ranks vote in one small collective every PAUSE_POLL_STEPS steps.
        """
        if self.ddp is not None and done % PAUSE_POLL_STEPS:
            return False
        local = preempt.requested() is not None or self._checkpoint_due()
        if self.ddp is None:
            return local
        return distributed.all_sum(float(local))[0] > 0

    def _partial(self, batch: int, loss_sum, wrong, seen: int, seconds: float) -> dict:
        """The epoch so far, for a mid-epoch checkpoint: the sums over every rank's images."""
        loss_sum, wrong, seen = distributed.all_sum(loss_sum, wrong, seen)
        return {"batch": batch, "loss_sum": torch.tensor(loss_sum, dtype=torch.float64),
                "wrong": torch.tensor(int(wrong), dtype=torch.int64), "seen": int(seen),
                "seconds": seconds}

    def _save(self, state: dict, epoch: int, step: int) -> None:
        """Never replace the last good checkpoint with non-finite weights. Rank 0 writes."""
        self._check_weights(epoch, step)
        if distributed.is_main():
            runfiles.save_checkpoint(self.run_dir / runfiles.CHECKPOINT, state)
        self.last_save = time.monotonic()

    def _save_partial(self, epoch: int, partial: dict) -> None:
        """A mid-epoch checkpoint; on a stop signal, then the one log line and Preempted."""
        self._save(self.state(epoch, self.history, self.wall, partial), epoch, partial["batch"])
        self._stop_if_requested(f"in epoch {epoch + 1}/{self.epochs} after batch "
                                f"{partial['batch']}/{len(self.stream)}")

    def _stop_if_requested(self, where: str) -> None:
        signum = preempt.requested() or 0
        if self.ddp is not None:  # every rank stops, on the signal any of them got
            signum = int(distributed.all_max(signum)[0])
        if not signum:
            return
        msg = (f"stopped by {preempt.name(signum)} {where}: checkpoint written to "
               f"{self.run_dir / runfiles.CHECKPOINT}; run the same command to resume")
        log.info(msg)
        raise preempt.Preempted(signum, msg)

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
        lo, hi = distributed.shard(len(self.y_test), distributed.rank(), distributed.world())
        for i in range(lo, hi, step):  # this rank's contiguous part of the test set
            x, y = self.x_test[i:min(i + step, hi)], self.y_test[i:min(i + step, hi)]
            with self._autocast():
                logits = self.fc(self.forward(self._inputs(x))).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            wrong += (logits.argmax(1) != y).sum().item()
        loss_sum, wrong = distributed.all_sum(loss_sum, wrong)
        n = len(self.y_test)
        return {"test_loss": loss_sum / n, "test_error": 100.0 * wrong / n}

    def ratio(self, epoch: int) -> float:
        isda = self.cfg.isda
        if isda.loss is None:  # lambda is ISDA's; the other losses ignore it
            return 0.0
        return isda_ratio(float(isda.lambda_0), epoch, self.epochs, constant=bool(isda.constant))

    # ------------------------------------------------------------ state

    def state(self, epoch: int, history: list[dict], wall: float, partial: dict | None = None) -> dict:
        """`epoch` epochs done; `partial`: how far into the next one (a mid-epoch checkpoint)."""
        return {
            "epoch": epoch, "partial": partial, "history": history, "wall_time": wall,
            "config": science_config(self.cfg),
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
        start, history, wall, resume = 0, [], 0.0, None
        latest = runfiles.load_latest(self.run_dir)
        if latest is not None:
            ckpt, _ = latest
            self.load_state(ckpt)
            start, history, wall = ckpt["epoch"], ckpt["history"], ckpt["wall_time"]
            resume = ckpt.get("partial")
            where = f"in epoch {start + 1} at batch {resume['batch']}/{len(self.stream)}" if resume \
                else f"after epoch {start}/{self.epochs}"
            log.info(f"resuming {self.run_dir} {where}")
        main = distributed.is_main()  # rank 0 alone writes the run's files
        if main:
            (self.run_dir / runfiles.FAILED).unlink(missing_ok=True)
        self.history, self.wall, self.last_save = history, wall, time.monotonic()
        metrics = runfiles.MetricsLog(self.run_dir, history, bool(self.cfg.trainer.tensorboard)) \
            if main else None
        try:
            for epoch in range(start, self.epochs):
                tic = time.perf_counter()
                row = {"epoch": epoch + 1, **self.train_epoch(epoch, resume)}
                self._check_weights(epoch, len(self.stream))
                row.update({**self.evaluate(), "lr": self.optimizer.param_groups[0]["lr"],
                            "eval_split": self.data.eval_split})
                self.scheduler.step()
                row["seconds"] = time.perf_counter() - tic + self.epoch_seconds
                resume = None
                wall += row["seconds"]
                history.append(row)
                if main:
                    metrics.append(row)
                self.wall = wall
                self._save(self.state(epoch + 1, history, wall), epoch, len(self.stream))
                log.info(f"epoch {epoch + 1}/{self.epochs}  train loss {row['train_loss']:.4f} "
                         f"err {row['train_error']:.2f}%  test loss {row['test_loss']:.4f} "
                         f"err {row['test_error']:.2f}%  lr {row['lr']:.4g}  lambda "
                         f"{row['lambda']:.3f}  {row['seconds']:.1f}s")
                if epoch + 1 < self.epochs:  # after the last epoch: finish (the summary is quick)
                    self._stop_if_requested(f"after epoch {epoch + 1}/{self.epochs}")
        finally:
            if metrics is not None:
                metrics.close()
        summary = self.summary(history, wall)
        if main:
            runfiles.write_json(self.run_dir / runfiles.SUMMARY, summary)
        return summary

    def summary(self, history: list[dict], wall: float) -> dict:
        from .identity import summary_fields  # the run's label and science config, computed once

        errors = [r["test_error"] for r in history]
        cfg = self.cfg
        return {**summary_fields(cfg, distributed.world()),
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
            "threads": torch.get_num_threads(), "world_size": distributed.world(),
            "sync_bn": bool(cfg.trainer.get("sync_bn")) and distributed.world() > 1,
            "wall_time": wall, "torch_version": torch.__version__, "device": device_name(self.device),
        }


def variant_name(isda: DictConfig) -> str:
    return "constant" if isda.constant else str(isda.loss.covariance)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def rng_states() -> dict:
    """Every RNG state as tensors and plain values, so a checkpoint loads with weights_only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": [version, list(internal), python_gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, python_gauss = states["python"]
    random.setstate((version, tuple(internal), python_gauss))
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
