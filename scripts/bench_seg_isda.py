"""Per-pixel ISDA's cost in a segmentation run: time and memory.

1. Time (CPU, a reduced crop): one DeepLab-v3 training step (dilated ResNet-101, the authors'
   512-channel heads, batch 2, crop --crop) with ISDA on both heads against the same step with plain
   cross-entropy, and the loss alone (forward + backward from the heads' feature maps) with and
   without ISDA. ISDA's share of the step = (loss with ISDA - plain loss) / ISDA step.
2. Peak memory of the loss alone at the paper's size (2 x 97 x 97 pixels of a 769 crop, C = 19,
   A = 512, one head): ours (isda_exp.losses.PixelISDA: update + augmented logits + backward)
   against the authors' formulation (their EstimatorCV.update_CV and isda_aug, N x C x A tensors
   over pixels), each measured in a fresh process as the growth of its peak resident memory.

Usage: python scripts/bench_seg_isda.py [--crop 257] [--steps 3] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

P_SIDE, C, A = 97, 19, 512  # the paper's feature map (769 crop, stride 8), classes, feature width


def step_times(crop: int, steps: int) -> dict:
    """Seconds of a training step with and without ISDA, and of the loss alone."""
    from isda_exp.losses import PixelISDA, SegmentationLoss
    from isda_exp.models.segmentation import deeplabv3

    torch.manual_seed(0)
    net = deeplabv3(C, "resnet101", head="authors").train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(2, 3, crop, crop)
    y = torch.randint(0, C, (2, crop, crop))
    y[:, : crop // 5] = 255
    losses = {"plain": SegmentationLoss((1.0, 0.4)),
              "isda": SegmentationLoss((1.0, 0.4), [PixelISDA(d, C) for d in net.feature_dims])}
    out = {}
    for name, loss in losses.items():
        def step():
            loss_value, _ = loss(net(x), net.classifiers, y, 7.5)
            opt.zero_grad()
            loss_value.backward()
            opt.step()
        out[f"step_{name}"] = best_of(step, steps)
    feats = [f.detach().requires_grad_(True) for f in net(x)]
    for name, loss in losses.items():
        out[f"loss_{name}"] = best_of(lambda: loss(feats, net.classifiers, y, 7.5)[0].backward(), steps * 4)
    return out


def best_of(fn, n: int) -> float:
    fn()  # warm-up (allocations, the first ISDA update)
    times = []
    for _ in range(n):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def authors_loss(feats, conv, labels, ratio):
    """Their update_CV and isda_aug (diagonal, C + 1 buckets, void -> bucket C) and the CE."""
    N, A_, h, w = feats.shape
    f = feats.permute(0, 2, 3, 1).reshape(-1, A_)
    t = labels.reshape(-1)
    n = len(t)
    void = (t == 255).long()
    t_cv = (1 - void) * t + void * C
    onehot = torch.zeros(n, C + 1).scatter_(1, t_cv.view(-1, 1), 1)
    nca = onehot.view(n, C + 1, 1).expand(n, C + 1, A_)
    by_sort = f.detach().view(n, 1, A_).expand(n, C + 1, A_).mul(nca)
    amount = nca.sum(0)
    amount[amount == 0] = 1
    ave = by_sort.sum(0) / amount
    var = (by_sort - ave.expand(n, C + 1, A_).mul(nca)).pow(2).sum(0).div(amount)
    del by_sort
    cov = var  # the first step's covariance (the estimator's state starts at zero)
    lab = (1 - void) * t
    y = conv(feats).permute(0, 2, 3, 1).reshape(-1, C)
    W = conv.weight.squeeze()
    NxW_kj = torch.gather(W.expand(n, C, A_), 1, lab.view(n, 1, 1).expand(n, C, A_))
    sigma2 = ratio * (W - NxW_kj).pow(2).mul(cov[lab].view(n, 1, A_).expand(n, C, A_)).sum(2)
    aug = (y + 0.5 * sigma2 * (1 - void).view(n, 1)).view(N, h, w, C).permute(0, 3, 1, 2)
    return F.cross_entropy(aug, labels, ignore_index=255)


def memory_child(which: str) -> None:
    """In a fresh process: the peak resident memory growth of one loss step (forward + backward)."""
    from isda_exp.losses import PixelISDA

    torch.set_num_threads(1)
    torch.manual_seed(0)
    feats = torch.randn(2, A, P_SIDE, P_SIDE, requires_grad=True)
    labels = torch.randint(0, C, (2, P_SIDE, P_SIDE))
    labels[:, :20] = 255
    conv = torch.nn.Conv2d(A, C, 1)
    isda = PixelISDA(A, C)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if which == "ours":
        aug, _ = isda(feats, conv, labels, 7.5)
        loss = F.cross_entropy(aug, labels, ignore_index=255)
    else:
        loss = authors_loss(feats, conv, labels, 7.5)
    loss.backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (after - before) / 1024}))


def memory(which: str) -> float:
    proc = subprocess.run([sys.executable, __file__, "--memory-child", which], capture_output=True,
                          text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=257)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--memory-child", choices=("ours", "authors"))
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    ours, theirs = memory("ours"), memory("authors")
    print(f"loss alone at 2 x {P_SIDE} x {P_SIDE} pixels, C={C}, A={A}: peak memory ours "
          f"{ours:.0f} MiB, the authors' formulation {theirs:.0f} MiB ({ours / theirs:.1%} of theirs)")
    t = step_times(args.crop, args.steps)
    share = (t["loss_isda"] - t["loss_plain"]) / t["step_isda"]
    print(f"DeepLab-v3 (ResNet-101, 512-channel heads) step, batch 2, crop {args.crop}: "
          f"{t['step_plain']:.2f} s plain, {t['step_isda']:.2f} s with ISDA on both heads; the loss "
          f"alone {t['loss_plain'] * 1e3:.1f} ms plain, {t['loss_isda'] * 1e3:.1f} ms with ISDA: "
          f"ISDA is {share:.2%} of the step")


if __name__ == "__main__":
    main()
