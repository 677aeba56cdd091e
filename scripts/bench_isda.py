"""Benchmark ISDALoss against the straightforward dense design: step time and peak memory.

One step = statistics update + augmented loss + backward, N = 128, lambda = 0.5. Each
configuration runs in a fresh subprocess so that its peak memory is its own: on CPU the peak
resident set (ru_maxrss, including the ~0.5 GB of torch itself: see "plain MB", a plain
cross-entropy step of the same size), on CUDA torch.cuda.max_memory_allocated.

    python scripts/bench_isda.py                       # C in {10, 100}, A in {64, ..., 2190}
    python scripts/bench_isda.py --classes 100 --dims 640 1024 --devices cpu

The reference design (written here from its description, not copied) keeps the same statistics
but uses dense N x C x A one-hot masks in the update (and C x A x A temporaries for all classes),
an N x A x A gather of per-sample covariances and an N x C x C product reduced to its diagonal.
It is skipped where it would need more than --reference-limit-gb.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

N = 128


class ReferenceISDA(nn.Module):
    """The dense design to beat (same semantics as ISDALoss(covariance="full"))."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        A, C = feature_dim, num_classes
        self.register_buffer("cov", torch.zeros(C, A, A))
        self.register_buffer("mean", torch.zeros(C, A))
        self.register_buffer("amount", torch.zeros(C))

    @torch.no_grad()
    def update(self, feats, y):
        (n, A), C = feats.shape, len(self.amount)
        onehot = torch.zeros(n, C, device=feats.device).scatter_(1, y[:, None], 1.0)
        mask = onehot[:, :, None].expand(n, C, A)                             # N x C x A
        by_class = feats[:, None, :] * mask
        count = mask.sum(0).clamp(min=1)
        batch_mean = by_class.sum(0) / count
        centred = by_class - batch_mean[None] * mask
        scatter = torch.bmm(centred.permute(1, 2, 0), centred.permute(1, 0, 2))  # C x A x A
        batch_cov = scatter / count[:, :, None]
        m = onehot.sum(0)
        w = torch.nan_to_num(m / (m + self.amount))                           # m / (n + m)
        w_cov = w[:, None, None].expand(C, A, A)
        delta = self.mean - batch_mean
        extra = w_cov * (1 - w_cov) * torch.bmm(delta[:, :, None], delta[:, None, :])
        self.cov = self.cov * (1 - w_cov) + batch_cov * w_cov + extra
        self.mean = self.mean * (1 - w[:, None]) + batch_mean * w[:, None]
        self.amount += m

    def forward(self, feats, fc, y, ratio):
        logits = fc(feats)
        self.update(feats.detach(), y)
        W, (n, A), C = fc.weight, feats.shape, len(self.amount)
        per_sample = self.cov[y]                                              # N x A x A
        diff = W[None].expand(n, C, A) - W[y][:, None, :]                     # N x C x A
        sigma2 = ratio * torch.bmm(torch.bmm(diff, per_sample), diff.transpose(1, 2))  # N x C x C
        sigma2 = (sigma2 * torch.eye(C, device=feats.device)[None]).sum(2)
        return F.cross_entropy(logits + 0.5 * sigma2, y), logits


def reference_bytes(C: int, A: int) -> int:
    """Rough peak of the reference: the N x A x A gather and ~5 C x A x A buffers, in float32."""
    return 4 * (N * A * A + 5 * C * A * A + 4 * N * C * A)


def worker(impl: str, device: str, C: int, A: int, threads: int, seconds: float) -> dict:
    """Time steps of one implementation in this (fresh) process; report time and peak memory."""
    import resource

    from isda_exp.losses import ISDALoss
    torch.set_num_threads(threads)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    fc = nn.Linear(A, C).to(dev)
    feats = (torch.randn(N, A, generator=gen).abs()).to(dev).requires_grad_()
    batches = [torch.randint(0, C, (N,), generator=gen).to(dev) for _ in range(8)]
    crit = {"ours": ISDALoss, "reference": ReferenceISDA, "plain": None}[impl]
    crit = crit(A, C).to(dev) if crit else None

    def step(y):
        if crit is None:
            loss = F.cross_entropy(fc(feats), y)
        else:
            loss = crit(feats, fc, y, 0.5)[0]
        loss.backward()
        feats.grad = fc.weight.grad = fc.bias.grad = None
        return loss.item()  # also synchronises CUDA

    losses = [step(batches[0]), step(batches[1])]  # warm-up; statistics for most classes
    times = []
    while len(times) < 3 or (sum(times) < seconds and len(times) < 50):
        y = batches[len(times) % len(batches)]
        t = time.perf_counter()
        step(y)
        times.append(time.perf_counter() - t)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"s": statistics.median(times), "peak_mb": peak, "loss": losses[1]}


def agreement(C: int = 100, A: int = 64, steps: int = 4) -> str:
    """Ours and the reference on the same batches: loss and gradient differences (float64)."""
    from isda_exp.losses import ISDALoss
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    fc = nn.Linear(A, C).double()
    ours, ref = ISDALoss(A, C).double(), ReferenceISDA(A, C).double()
    worst = [0.0, 0.0, 0.0]
    for _ in range(steps):
        feats = torch.randn(N, A, generator=gen, dtype=torch.float64).relu() * 3
        y = torch.randint(0, C, (N,), generator=gen)
        grads = []
        for crit in (ours, ref):
            x = feats.clone().requires_grad_()
            loss = crit(x, fc, y, 0.5)[0]
            grads.append((loss, *torch.autograd.grad(loss, (x, fc.weight))))
        plain = F.cross_entropy(fc(feats), y)
        worst = [max(w, (a - b).abs().max().item()) for w, a, b in zip(worst, *grads)]
    return (f"ours vs reference, float64, C={C} A={A}, {steps} steps: max |dloss| {worst[0]:.1e} "
            f"(augmentation adds {(grads[0][0] - plain).item():.2f}), max |dgrad| features "
            f"{worst[1]:.1e}, W {worst[2]:.1e}")


def run(impl, device, C, A, args) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", impl, device, str(C), str(A),
           "--threads", str(args.threads), "--seconds", str(args.seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {impl} {device} C={C} A={A} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table_row(C: int, A: int, device: str, args) -> str:
    """One configuration: ours, the reference (unless skipped) and a plain cross-entropy step."""
    skip = args.no_reference or reference_bytes(C, A) > args.reference_limit_gb * 2**30
    ours, plain = run("ours", device, C, A, args), run("plain", device, C, A, args)
    ref = None if skip else run("reference", device, C, A, args)
    missing = "skipped" if skip else "failed"
    return " ".join([
        f"{C:>4}", f"{A:>5}", f"{ours['s']:>12.4f}" if ours else f"{'failed':>12}",
        f"{ref['s']:>11.4f}" if ref else f"{missing:>11}",
        f"{ref['s'] / ours['s']:>7.1f}x" if ours and ref else f"{'':>8}",
        f"{ours['peak_mb']:>8.0f}" if ours else f"{'':>8}",
        f"{ref['peak_mb']:>8.0f}" if ref else f"{'':>8}",
        f"{plain['peak_mb']:>9.0f}" if plain else f"{'':>9}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--classes", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--dims", nargs="+", type=int, default=[64, 342, 640, 1024, 2190])
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per config")
    parser.add_argument("--reference-limit-gb", type=float, default=8.0)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--worker", nargs=4, metavar=("IMPL", "DEVICE", "C", "A"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, device, C, A = args.worker
        print(json.dumps(worker(impl, device, int(C), int(A), args.threads, args.seconds)))
        return
    print(agreement())
    devices = [d for d in args.devices if d != "cuda" or torch.cuda.is_available()]
    for device in devices:
        name = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {args.threads} threads"
        print(f"\n{name}, N={N}; peak memory: "
              + ("torch.cuda.max_memory_allocated" if device == "cuda" else "process RSS"))
        print(f"{'C':>4} {'A':>5} {'ours s/step':>12} {'ref s/step':>11} {'speedup':>8} "
              f"{'ours MB':>8} {'ref MB':>8} {'plain MB':>9}")
        for C in args.classes:
            for A in args.dims:
                print(table_row(C, A, device, args), flush=True)


if __name__ == "__main__":
    main()
