"""BatchNorm over the global batch of a run spread over several ranks (trainer.sync_bn=true).

torch's SyncBatchNorm works on GPUs only; CPUSyncBatchNorm2d gives the same statistics on CPU
ranks (gloo), so a 2-process CPU run with sync_bn equals the 1-process run step by step.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .distributed import world


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch: torch's SyncBatchNorm on CUDA, CPUSyncBatchNorm2d on the
    CPU (torch's supports GPUs only). The parameters and buffers are kept (same tensors)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CPUSyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            setattr(module, name, new)
        else:
            sync_batchnorm(child, device)
    return module


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch over all ranks (gloo).

    Two differentiable all-reduces (sum, then centred sum of squares): the gradient flows through
    the global statistics to every rank's inputs, as in torch's CUDA SyncBatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world() > 1):
            return super().forward(x)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 under autocast
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=xf.dtype)
        total = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply(centred.square().sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out.to(x.dtype)
