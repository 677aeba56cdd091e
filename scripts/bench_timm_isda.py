#!/usr/bin/env python
"""ISDA's cost on timm backbones: the ISDA loss's time as a fraction of a training step, at each
architecture's native resolution, on the CPU (or --device cuda), diagonal and full covariance.

A step is forward + backward + SGD of the backbone and the classifier with plain cross-entropy on
a batch of random images at the architecture's input size (timm's pretrained config). The loss
time is measured apart, on the batch's real features: ISDA (statistics update, augmented logits,
backward) minus cross-entropy, both through the same classifier; "ISDA +" is that difference over
the step. Statistics are warmed up first (every class seen), so the timed update is the steady one.
The fastest of --repeats steps (of at least 20 loss calls) is kept (the machine may be shared:
see --wait-load).

    python scripts/bench_timm_isda.py                                   # the docs' figures
    python scripts/bench_timm_isda.py --archs resnet50 --classes 100 1000 --batch 32
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import timm
import torch
import torch.nn.functional as F
from torch import nn

from isda_exp.losses import MAX_FULL_COVARIANCE_BYTES, ISDALoss


def fastest(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, oneDNN primitives)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def step_time(backbone, fc, x, y, repeats):
    opt = torch.optim.SGD([*backbone.parameters(), *fc.parameters()], lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(fc(backbone(x)), y).backward()
        opt.step()
    return fastest(step, repeats)


def loss_times(features, fc, y, covariance, repeats):
    """(CE loss s, ISDA loss s) forward + backward on detached features that require grad."""
    A, C = features.shape[1], fc.out_features
    crit = ISDALoss(A, C, covariance)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every class seen: the steady-state update
        crit.update_statistics(features.repeat(2 * C // len(y) + 1, 1)[:C * 2] +
                               torch.randn(C * 2, A, generator=gen), torch.arange(C * 2) % C)
    f = features.detach().requires_grad_(True)

    def ce():
        fc.zero_grad(set_to_none=True), setattr(f, "grad", None)
        F.cross_entropy(fc(f), y).backward()

    def isda():
        fc.zero_grad(set_to_none=True), setattr(f, "grad", None)
        crit(f, fc, y, 0.5)[0].backward()
    return fastest(ce, repeats), fastest(isda, repeats)


def wait_for_quiet(max_load):
    if max_load is None or not hasattr(os, "getloadavg"):
        return
    deadline = time.time() + 600
    while os.getloadavg()[0] > max_load and time.time() < deadline:
        time.sleep(5)


def bench(arch, classes, batch, repeats, device):
    torch.manual_seed(0)
    backbone = timm.create_model(arch, num_classes=0).to(device).train()
    size = int(backbone.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    A = backbone.num_features
    x = torch.randn(batch, 3, size, size, device=device)
    rows = []
    for C in classes:
        fc = nn.Linear(A, C).to(device)
        y = torch.arange(batch, device=device) % C
        step = step_time(backbone, fc, x, y, repeats)
        with torch.no_grad():
            features = backbone(x)
        for cov in ("diagonal", "full"):
            if cov == "full" and C * A * A * 4 > MAX_FULL_COVARIANCE_BYTES:
                rows.append({"arch": arch, "classes": C, "covariance": cov, "skipped":
                             f"C x A x A = {C * A * A * 4 / 1e9:.1f} GB"})
                continue
            ce, isda = loss_times(features, fc, y, cov, max(20, repeats))  # ms: cheap to repeat
            rows.append({"arch": arch, "input": size, "feature_dim": A, "classes": C,
                         "covariance": cov, "batch": batch, "step_s": step, "ce_loss_s": ce,
                         "isda_loss_s": isda, "isda_fraction": (isda - ce) / step})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["convnext_nano", "efficientnet_b0",
                                                  "vit_tiny_patch16_224"])
    p.add_argument("--classes", nargs="+", type=int, default=[100, 1000])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--wait-load", type=float, default=None, help="wait for the 1-min load to drop below this")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, timm {timm.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, load {os.getloadavg()[0]:.1f}")
    print("| arch | input | A | C | covariance | step s | ISDA loss ms | CE loss ms | ISDA + (of the step) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for arch in args.archs:
        wait_for_quiet(args.wait_load)
        for r in bench(arch, args.classes, args.batch, args.repeats, torch.device(args.device)):
            rows.append(r)
            if "skipped" in r:
                print(f"| {arch} | | | {r['classes']} | full | skipped: {r['skipped']} | | | |")
            else:
                print(f"| {arch} | {r['input']} | {r['feature_dim']} | {r['classes']} | {r['covariance']} | "
                      f"{r['step_s']:.2f} | {1e3 * r['isda_loss_s']:.1f} | {1e3 * r['ce_loss_s']:.1f} | "
                      f"{100 * r['isda_fraction']:.2f}% |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
