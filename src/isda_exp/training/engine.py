"""The step engine: what one training step and one evaluation pass do on the device.

It owns the model (features + classifier), the loss, the optimizer and the precision: inputs
(uint8 -> normalized float, memory format), autocast, the forward pass (compiled when asked, with
a fallback to eager when compiling fails), one SGD step and the plain test pass. The loop
(isda_exp.training.trainer) decides when; the engine knows how. Benchmarks and tests call these public
methods.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from ..data.normalize import normalize
from ..parallel import distributed
from .checkpoint import rng_states, set_rng_states

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Engine:
    """Model, loss and optimizer of a run, with its precision, memory format and compilation."""

    def __init__(self, net, fc, criterion, optimizer, device: torch.device, precision: str = "fp32",
                 channels_last: bool = False, compile: bool = False, norm: tuple | None = None):
        self.norm = norm  # (mean, std) of the data source (image folders); None: CIFAR's
        self.net, self.fc, self.criterion, self.optimizer, self.device = net, fc, criterion, optimizer, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.ddp = distributed.wrap(distributed.Pair(self.net, self.fc), device)  # None: 1 rank
        self.trained = self.net if self.ddp is None else self.ddp  # what a training step calls
        self.compiled = self._compiled(self.trained) if compile else None
        self.proven_shapes: set[tuple] = set()  # batch shapes whose compiled step has run
        self.amp_dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    # ------------------------------------------------------------ forward

    def autocast(self):
        """The run's mixed-precision context (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def inputs(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the network's normalized float input in the run's memory format."""
        x = normalize(x_uint8, self.norm)
        return x.contiguous(memory_format=self.memory_format)

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

    def _compiled(self, net):
        try:
            return torch.compile(net)
        except Exception as e:  # unsupported platform or Python version, ...
            warnings.warn(f"torch.compile unavailable ({e}); training uncompiled")
            return None

    def _uncompile(self, error: Exception) -> None:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        warnings.warn(f"torch.compile failed ({type(error).__name__}: {first}); "
                      "falling back to the uncompiled model")
        self.compiled = None

    # ------------------------------------------------------------ steps

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lam: float, epoch: int = 0, step: int = 0):
        """One SGD step on a batch of augmented uint8 images at ISDA strength `lam`; returns the
        detached (loss, logits).

        The backward pass of a compiled model is compiled at its first run, so the first step of
        each new batch shape is guarded: if it fails, its side effects (BatchNorm and ISDA
        statistics, RNG) are undone and the step is redone with the eager model.
        """
        shape = tuple(x.shape)
        if self.compiled is None or shape in self.proven_shapes:
            return self._step(x, y, lam, epoch, step)
        saved = self._snapshot()
        try:
            out = self._step(x, y, lam, epoch, step)
        except Exception as e:
            if self.compiled is None:  # the forward already fell back: not a compile error
                raise
            self._restore(saved)
            self._uncompile(e)
            return self._step(x, y, lam, epoch, step)
        self.proven_shapes.add(shape)
        return out

    def _step(self, x, y, lam, epoch=0, step=0):
        with self.autocast():
            features = self.forward(self.inputs(x))
            loss, logits = self.criterion(features, self.fc, y, lam, epoch=epoch, step=step)
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
    def evaluate(self, stream, batch_size: int) -> dict:
        """Plain logits on the unaugmented evaluation stream (this rank's part), summed over ranks.

        A stream with `top5 = True` (image folders) adds test_error_top5, and one with
        `take_bad_images` the images it replaced since the last call (bad_images) and, when any
        file failed, `bad_files` (their paths under the data set's root).
        """
        self.net.eval()
        loss_sum, wrong, wrong5 = 0.0, 0, 0
        top5 = getattr(stream, "top5", False)
        for x, y in stream.batches(batch_size):
            with self.autocast():
                logits = self.fc(self.forward(self.inputs(x))).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            wrong += (logits.argmax(1) != y).sum().item()
            if top5:
                top = logits.topk(min(5, logits.shape[1]), 1).indices
                wrong5 += (top != y.unsqueeze(1)).all(1).sum().item()
        loss_sum, wrong = distributed.all_sum(loss_sum, wrong)
        n = stream.num_images
        out = {"test_loss": loss_sum / n, "test_error": 100.0 * wrong / n}
        if top5:
            out["test_error_top5"] = 100.0 * distributed.all_sum(wrong5)[0] / n
        if hasattr(stream, "take_bad_images"):
            out["bad_images"] = int(distributed.all_sum(stream.take_bad_images())[0])
        if hasattr(stream, "take_bad_files"):  # an image folder's files that failed, if any
            bad = distributed.all_union(stream.take_bad_files())
            out.update({"bad_files": bad} if bad else {})
        return out

    def weights_finite(self) -> bool:
        """One host sync over every parameter of the model and the classifier."""
        params = [*self.net.parameters(), *self.fc.parameters()]
        return bool(torch.stack([p.detach().isfinite().all() for p in params]).all().item())
