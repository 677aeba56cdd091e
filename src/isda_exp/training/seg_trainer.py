"""The loop of a segmentation run: iterations (no epochs), the poly learning rate and ISDA's lambda
set every iteration, metrics every trainer.log_every iterations, evaluations, checkpoints every
trainer.checkpoint_every iterations and on a stop signal, exact resume, the final evaluation and
summary.json.

The run's objects come from seg_build; each step is seg_engine's, each evaluation seg_eval's. A
checkpoint holds the network (its classifiers and BatchNorm statistics), the optimizer, the ISDA
statistics of both heads, the grad scaler, every RNG, the history and the open logging window;
the data's position is the iteration itself (the sampler serves batch g as a function of (seed,
g)), so a run killed at any moment resumes from its last checkpoint to the same numbers. Rank 0
writes every file; under DDP the ranks vote on a stop every PAUSE_POLL_STEPS iterations.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from .. import rundir
from ..parallel import distributed
from ..rundir.identity import science_config
from ..seeding import seg_noise_seed
from . import preempt
from .checkpoint import rng_states, set_rng_states
from .seg_build import SegRunObjects, build_seg_run, poly_lr, seg_ratio
from .seg_eval import evaluate
from .seg_summary import seg_summary
from .trainer import PAUSE_POLL_STEPS, Diverged

log = logging.getLogger("isda_exp")


class SegTrainer:
    """Trains one segmentation run in `run_dir`: `fit()` starts it or resumes it."""

    def __init__(self, cfg: DictConfig, run_dir: Path, run: SegRunObjects | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run = build_seg_run(cfg) if run is None else run
        self.engine, self.total = self.run.engine, self.run.iterations
        t = cfg.trainer
        self.log_every, self.eval_every = int(t.log_every), t.get("eval_every")
        self.checkpoint_every = int(t.checkpoint_every)
        minutes = t.get("checkpoint_minutes")
        self.checkpoint_seconds = 60 * float(minutes) if minutes else None
        self.history, self.wall, self.last_save = [], 0.0, time.monotonic()
        self.window = _Window(self.run.device)

    # ------------------------------------------------------------ the run

    def fit(self) -> dict:
        start = self._resume()
        main = distributed.is_main()
        if main:
            (self.run_dir / rundir.FAILED).unlink(missing_ok=True)
        metrics = rundir.MetricsLog(self.run_dir, self.history, bool(self.cfg.trainer.tensorboard)) \
            if main else None
        try:
            self._train(start, metrics)
            final = self._final(metrics)
        finally:
            if metrics is not None:
                metrics.close()
        summary = seg_summary(self.cfg, self.run, final, self.wall)
        if main:
            rundir.write_json(self.run_dir / rundir.SUMMARY, summary)
        return summary

    def _train(self, start: int, metrics) -> None:
        tic = time.perf_counter()
        for it, (x, y, boxes) in enumerate(self.run.train.iterations(start), start=start):
            i = it + 1
            lr, lam = self._set_lr(i), seg_ratio(self.run.lambda_0, i, self.total, self.run.constant)
            self.window.add(self.engine.train_step(x, y, boxes, lam))
            if i % self.log_every == 0 or i == self.total:
                now = time.perf_counter()
                self._log(metrics, self.window.row(i, lr, lam, now - tic, self._diverged))
                self.wall, tic = self.wall + now - tic, now
            if self.eval_every and i % int(self.eval_every) == 0 and i < self.total:
                self._log(metrics, {"iteration": i, **self._evaluate(False)})
            if i == self.total or i % self.checkpoint_every == 0 or self._pause_due(i):
                self.wall, tic = self.wall + time.perf_counter() - tic, time.perf_counter()
                self._save(i)
                if i < self.total:
                    self._stop_if_requested(f"after iteration {i}/{self.total}")

    def _final(self, metrics) -> dict:
        """The last evaluation (single scale, and multi-scale / flip as dataset.evaluation says),
        logged once: a run resumed after it only writes the summary."""
        done = [r for r in self.history if r.get("final")]
        if done:
            return done[-1]
        tic = time.perf_counter()
        multi = tuple(self.run.data.evaluation["scales"]) != (1.0,) or self.run.data.evaluation["flip"]
        row = {"iteration": self.total, "final": True, **self._evaluate(multi)}
        row["seconds"] = time.perf_counter() - tic
        self.wall += row["seconds"]
        self._log(metrics, row)
        self._save(self.total)
        return row

    def _evaluate(self, multi_scale: bool) -> dict:
        out = evaluate(self.engine, self.run.eval, self.run.data.class_names,
                       self.run.data.evaluation, multi_scale)
        self.engine.net.train()
        log.info(f"evaluation: mIoU {out['miou']:.2f}%"
                 + (f" (multi-scale {out['miou_ms']:.2f}%, + flip {out['miou_msf']:.2f}%)"
                    if "miou_ms" in out else ""))
        return out

    def _log(self, metrics, row: dict) -> None:
        self.history.append(row)
        if metrics is not None:
            metrics.append(row)
        if "train_loss" in row:
            log.info(f"iteration {row['iteration']}/{self.total}  train loss {row['train_loss']:.4f}  "
                     f"lr {row['lr']:.4g}  lambda {row['lambda']:.3f}")

    def _set_lr(self, i: int) -> float:
        r = self.cfg.model.recipe
        lr = poly_lr(float(r.lr), i, self.total, float(r.power))
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # ------------------------------------------------------------ checkpoints and resume

    def _resume(self) -> int:
        latest = rundir.load_latest(self.run_dir)
        if latest is None:
            rank = distributed.rank() if self.engine.ddp is not None else 0
            torch.manual_seed(seg_noise_seed(self.run.seed, rank))  # dropout draws of the run
            return 0
        ckpt, _ = latest
        e = self.engine
        e.net.load_state_dict(ckpt["model"])
        e.optimizer.load_state_dict(ckpt["optimizer"])
        e.criterion.load_state_dict(ckpt["isda"])
        e.scaler.load_state_dict(ckpt["scaler"])
        set_rng_states(ckpt["rng"])
        self.history, self.wall = ckpt["history"], ckpt["wall_time"]
        self.window.load(ckpt["partial"])
        log.info(f"resuming {self.run_dir} after iteration {ckpt['iteration']}/{self.total}")
        return int(ckpt["iteration"])

    def _save(self, iteration: int) -> None:
        if not self.engine.weights_finite():
            self._diverged(iteration, "non-finite weights")
        e = self.engine
        state = {"epoch": 0, "iteration": iteration, "partial": self.window.state(),
                 "history": self.history, "wall_time": self.wall, "config": science_config(self.cfg),
                 "model": e.net.state_dict(), "classifier": {}, "optimizer": e.optimizer.state_dict(),
                 "scheduler": {"iteration": iteration}, "isda": e.criterion.state_dict(),
                 "scaler": e.scaler.state_dict(), "rng": rng_states()}
        if distributed.is_main():
            rundir.save_checkpoint(self.run_dir / rundir.CHECKPOINT, state)
        self.last_save = time.monotonic()

    def _pause_due(self, i: int) -> bool:
        if self.engine.ddp is not None and i % PAUSE_POLL_STEPS:
            return False
        local = preempt.requested() is not None or (
            self.checkpoint_seconds is not None and time.monotonic() - self.last_save >= self.checkpoint_seconds)
        if self.engine.ddp is None:
            return local
        return distributed.all_sum(float(local))[0] > 0

    def _stop_if_requested(self, where: str) -> None:
        signum = preempt.requested() or 0
        if self.engine.ddp is not None:
            signum = int(distributed.all_max(signum)[0])
        if signum:
            msg = (f"stopped by {preempt.name(signum)} {where}: checkpoint written to "
                   f"{self.run_dir / rundir.CHECKPOINT}; run the same command to resume")
            log.info(msg)
            raise preempt.Preempted(signum, msg)

    def _diverged(self, iteration: int, what: str):
        kept = "the last good checkpoint last.pt is kept" if (self.run_dir / rundir.CHECKPOINT).exists() \
            else "no checkpoint was written"
        msg = (f"training diverged at iteration {iteration}/{self.total} ({what}); {kept}. Try a "
               f"lower model.recipe.lr (now {self.cfg.model.recipe.lr})"
               + (f" or isda.lambda_0 (now {self.cfg.isda.lambda_0})" if self.run.lambda_0 is not None else "")
               + ", in a new out_root=DIR")
        if distributed.is_main():
            rundir.write_json(self.run_dir / rundir.FAILED, {"error": msg, "reason": "diverged",
                                                             "iteration": iteration, "what": what})
        raise Diverged(msg)


class _Window:
    """The training loss summed on the device between two metrics rows (no host sync a step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.load(None)

    def load(self, state: dict | None) -> None:
        self.sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.steps = 0
        if state:
            self.sum += state["loss_sum"].to(self.device)
            self.steps = int(state["steps"])

    def state(self) -> dict:
        return {"loss_sum": self.sum.detach().cpu().clone(), "steps": self.steps}

    def add(self, loss: torch.Tensor) -> None:
        self.sum += loss.double()
        self.steps += 1

    def row(self, i: int, lr: float, lam: float, seconds: float, diverged) -> dict:
        """The metrics row of the window's iterations (the global mean loss), then a new window."""
        mean = distributed.all_sum(self.sum)[0] / distributed.world() / max(1, self.steps)
        if mean != mean or mean in (float("inf"), float("-inf")):
            diverged(i, f"train loss {mean}")
        self.load(None)
        return {"iteration": i, "train_loss": mean, "lr": lr, "lambda": lam, "seconds": seconds}
