"""The training loop: resume, epochs, pauses, divergence, checkpoints, summary.

The run's objects come built (isda_exp.training.build.build_run); the engine does each step and each
evaluation (isda_exp.training.engine); what a checkpoint holds is isda_exp.training.checkpoint's, and the summary
isda_exp.training.summary's. This module decides when each happens.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from .. import rundir
from ..errors import UserError
from ..parallel import distributed
from ..rundir.identity import science_config
from ..seeding import train_noise_seed
from . import checkpoint, preempt
from .build import RunObjects, build_run
from .summary import summarise

log = logging.getLogger("isda_exp")
FINITE_CHECK_STEPS = 100  # a non-finite loss is looked for every this many steps (one host sync)
PAUSE_POLL_STEPS = 10  # under DDP, the ranks agree on a stop or a periodic checkpoint this often


class Diverged(UserError):
    """The training loss or the weights became non-finite; failed.json is written already."""

    recorded = True


class Trainer:
    """Trains one run in `run_dir`: `fit()` starts it, or resumes it from its checkpoint."""

    # False: a non-finite loss does not stop the epoch, whose train_loss then reads nan (a
    # benchmark times the loop on any data and reports such an epoch instead of dying)
    stop_on_nonfinite = True

    def __init__(self, cfg: DictConfig, run_dir: Path, run: RunObjects | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run = build_run(cfg) if run is None else run
        self.engine, self.stream, self.epochs = self.run.engine, self.run.train, self.run.epochs
        self.history, self.wall, self.last_save, self.epoch_seconds = [], 0.0, time.monotonic(), 0.0
        minutes = cfg.trainer.get("checkpoint_minutes")  # read once: polled after every step
        self.checkpoint_seconds = 60 * float(minutes) if minutes else None

    # ------------------------------------------------------------ the run

    def fit(self) -> dict:
        """Resume (or start), train the remaining epochs, write the summary (rank 0 writes)."""
        start, resume = self._resume()
        main = distributed.is_main()
        if main:
            (self.run_dir / rundir.FAILED).unlink(missing_ok=True)
        metrics = rundir.MetricsLog(self.run_dir, self.history, bool(self.cfg.trainer.tensorboard)) \
            if main else None
        try:
            for epoch in range(start, self.epochs):
                row = self._epoch(epoch, resume)
                resume = None
                if main:
                    metrics.append(row)
                if epoch + 1 < self.epochs:  # after the last epoch: finish (the summary is quick)
                    self._stop_if_requested(f"after epoch {epoch + 1}/{self.epochs}")
        finally:
            if metrics is not None:
                metrics.close()
        summary = summarise(self.cfg, self.run, self.history, self.wall)
        if main:
            rundir.write_json(self.run_dir / rundir.SUMMARY, summary)
        return summary

    def _resume(self) -> tuple[int, dict | None]:
        """The first epoch to train and, mid-epoch, how far into it the checkpoint got."""
        self.history, self.wall, self.last_save = [], 0.0, time.monotonic()
        latest = rundir.load_latest(self.run_dir)
        if latest is None:
            return 0, None
        ckpt, _ = latest
        checkpoint.restore(self.run, ckpt)
        self.history, self.wall = ckpt["history"], ckpt["wall_time"]
        start, resume = ckpt["epoch"], ckpt.get("partial")
        where = f"in epoch {start + 1} at batch {resume['batch']}/{len(self.stream)}" if resume \
            else f"after epoch {start}/{self.epochs}"
        log.info(f"resuming {self.run_dir} {where}")
        return start, resume

    def _epoch(self, epoch: int, resume: dict | None) -> dict:
        """Train and evaluate one epoch, step the schedule, checkpoint; the metrics row."""
        tic = time.perf_counter()
        row = {"epoch": epoch + 1, **self.train_epoch(epoch, resume)}
        self._check_weights(epoch, len(self.stream))
        row.update({**self.evaluate(), "lr": self.engine.optimizer.param_groups[0]["lr"],
                    "eval_split": self.run.eval.split})
        self.run.scheduler.step()
        row["seconds"] = time.perf_counter() - tic + self.epoch_seconds
        self.wall += row["seconds"]
        self.history.append(row)
        self._save(self._state(epoch + 1))  # the weights were checked above
        log.info(f"epoch {epoch + 1}/{self.epochs}  train loss {row['train_loss']:.4f} "
                 f"err {row['train_error']:.2f}%  test loss {row['test_loss']:.4f} "
                 f"err {row['test_error']:.2f}%  lr {row['lr']:.4g}  lambda "
                 f"{row['lambda']:.3f}  {row['seconds']:.1f}s")
        return row

    def evaluate(self) -> dict:
        """The evaluation set's loss and error (%) with the weights as they are."""
        return self.engine.evaluate(self.run.eval, self.run.eval_batch_size)

    def train_epoch(self, epoch: int, resume: dict | None = None) -> dict:
        """One pass over the training set; lambda is fixed within the epoch.

        `resume` (a mid-epoch checkpoint's "partial") continues the epoch at its batch. The loop
        polls for a stop signal and the periodic checkpoint after each step (no device sync)
        and looks for a non-finite loss every FINITE_CHECK_STEPS steps.
        """
        self.engine.net.train()
        if resume is None:  # else the checkpoint restored the RNG as it was at that batch
            # dropout, shake-shake: a function of the epoch (and of the rank, when several train)
            rank = distributed.rank() if self.engine.ddp is not None else None
            torch.manual_seed(train_noise_seed(self.run.seed, epoch, rank))
        lam = self.run.isda_lambda(epoch)
        sums = _EpochSums(self.run.device, len(self.stream), resume)
        first, tic = sums.first, time.perf_counter()
        bar = tqdm(self.stream.epoch(epoch, first), total=len(self.stream), initial=first, leave=False,
                   desc=f"epoch {epoch + 1}/{self.epochs}",
                   disable=not self.cfg.trainer.progress or not distributed.is_main())
        for b, (x, y) in enumerate(bar, start=first):
            loss, logits = self.engine.train_step(x, y, lam, epoch, b)
            sums.add(b, loss, logits, y)
            pause = self._pause_due(b + 1)
            if pause or (b + 1) % FINITE_CHECK_STEPS == 0:
                self._check_loss(epoch, sums, b + 1)
            if pause:
                self._save_partial(epoch, sums.partial(b + 1, sums.earlier + time.perf_counter() - tic))
        self._check_loss(epoch, sums, len(self.stream))
        self.epoch_seconds = sums.earlier  # the part of this epoch trained before a resume
        loss_sum, wrong, seen = distributed.all_sum(sums.loss_sum, sums.wrong, sums.seen)  # global
        return {"train_loss": loss_sum / seen, "train_error": 100.0 * wrong / seen, "lambda": lam}

    # ------------------------------------------------------------ faults

    def _check_loss(self, epoch: int, sums: "_EpochSums", done: int) -> None:
        """Stop on a non-finite loss: one host sync, the step found only when it is needed."""
        if not self.stop_on_nonfinite:
            return
        step = sums.first_bad_step(done)
        if step is not None:
            self._diverged(epoch, step + 1, f"train loss {float(sums.losses[step])}")

    def _check_weights(self, epoch: int, step: int) -> None:
        if not self.engine.weights_finite():
            self._diverged(epoch, step, "non-finite weights")

    def _diverged(self, epoch: int, step: int, what: str):
        cfg = self.cfg
        kept = "the last good checkpoint last.pt is kept" if (self.run_dir / rundir.CHECKPOINT).exists() \
            else "no checkpoint was written"
        advice = f"a lower model.recipe.lr (now {cfg.model.recipe.lr})"
        if cfg.isda.loss is not None:
            advice += f" or isda.lambda_0 (now {cfg.isda.lambda_0})"
        msg = (f"training diverged in epoch {epoch + 1}/{self.epochs} at step {step}/{len(self.stream)} "
               f"({what}); {kept}. Try {advice}, in a new out_root=DIR")
        if distributed.is_main():  # rank 0 alone writes the run's files
            rundir.write_json(self.run_dir / rundir.FAILED, {
                "error": msg, "reason": "diverged", "epoch": epoch + 1, "step": step, "what": what,
                "precision": cfg.trainer.precision})
        raise Diverged(msg)

    # ------------------------------------------------------------ pauses and checkpoints

    def _checkpoint_due(self) -> bool:
        return self.checkpoint_seconds is not None and \
            time.monotonic() - self.last_save >= self.checkpoint_seconds

    def _pause_due(self, done: int) -> bool:
        """A stop signal or the periodic checkpoint, after `done` steps of the epoch.

        One process polls after every step (a Python check). Under DDP every rank must pause at
        the same step, so the ranks vote in one small collective every PAUSE_POLL_STEPS steps.
        """
        if self.engine.ddp is not None and done % PAUSE_POLL_STEPS:
            return False
        local = preempt.requested() is not None or self._checkpoint_due()
        if self.engine.ddp is None:
            return local
        return distributed.all_sum(float(local))[0] > 0

    def _state(self, epoch: int, partial: dict | None = None) -> dict:
        return checkpoint.capture(self.run, epoch, self.history, self.wall, science_config(self.cfg),
                                  partial)

    def _save(self, state: dict) -> None:
        """Rank 0 writes; the caller has checked the weights (never replace the last good
        checkpoint with non-finite weights)."""
        if distributed.is_main():
            rundir.save_checkpoint(self.run_dir / rundir.CHECKPOINT, state)
        self.last_save = time.monotonic()

    def _save_partial(self, epoch: int, partial: dict) -> None:
        """A mid-epoch checkpoint; on a stop signal, then the one log line and Preempted."""
        self._check_weights(epoch, partial["batch"])
        self._save(self._state(epoch, partial))
        self._stop_if_requested(f"in epoch {epoch + 1}/{self.epochs} after batch "
                                f"{partial['batch']}/{len(self.stream)}")

    def _stop_if_requested(self, where: str) -> None:
        signum = preempt.requested() or 0
        if self.engine.ddp is not None:  # every rank stops, on the signal any of them got
            signum = int(distributed.all_max(signum)[0])
        if not signum:
            return
        msg = (f"stopped by {preempt.name(signum)} {where}: checkpoint written to "
               f"{self.run_dir / rundir.CHECKPOINT}; run the same command to resume")
        log.info(msg)
        raise preempt.Preempted(signum, msg)


class _EpochSums:
    """An epoch's running sums on the device (no host sync per step), resumable mid-epoch."""

    def __init__(self, device: torch.device, steps: int, resume: dict | None):
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.wrong = torch.zeros((), device=device, dtype=torch.int64)
        self.losses = torch.full((steps,), float("nan"), device=device)  # names the step that went bad
        self.seen, self.first, self.earlier = 0, 0, 0.0
        if resume is not None:
            self.first, self.earlier = int(resume["batch"]), float(resume["seconds"])
            if distributed.is_main():  # the checkpoint holds the global sums: counted once
                self.loss_sum += resume["loss_sum"].to(device)
                self.wrong += resume["wrong"].to(device)
                self.seen = int(resume["seen"])

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.double() * len(y)
        self.losses[step] = loss.detach().float()
        self.wrong += (logits.argmax(1) != y).sum()
        self.seen += len(y)

    def first_bad_step(self, done: int) -> int | None:
        """None while the loss sum is finite, else the first step (0-based) whose loss is not."""
        if torch.isfinite(self.loss_sum).item():
            return None
        bad = (~torch.isfinite(self.losses[self.first:done])).nonzero()
        return self.first + int(bad[0]) if len(bad) else done - 1

    def partial(self, batch: int, seconds: float) -> dict:
        """The epoch so far, for a mid-epoch checkpoint: the sums over every rank's images."""
        loss_sum, wrong, seen = distributed.all_sum(self.loss_sum, self.wrong, self.seen)
        return {"batch": batch, "loss_sum": torch.tensor(loss_sum, dtype=torch.float64),
                "wrong": torch.tensor(int(wrong), dtype=torch.int64), "seen": int(seen),
                "seconds": seconds}
