#!/usr/bin/env python
"""Benchmarks of image folders: the image-folder input pipeline, and ISDA's diagonal loss at ImageNet size.

pipeline: training images per second per CPU core (decode + RandomResizedCrop(224) + flip +
collate) on one folder of full-size JPEGs (generated: 500x375, quality 90, photo-like content), the
authors' pipeline (torchvision ImageFolder + PIL transforms + ToTensor + Normalize in a DataLoader)
against ours (isda_exp.data.folder.source: TorchCodec decode + uint8 crop in a DataLoader; normalisation
happens later on the training device), side by side in one run, interleaved, best of --repeats.

isda: one step (statistics update + loss + backward) of ISDALoss(covariance="diagonal") at N=64,
C=1000, A=2048 against the authors' formulation (their N x C x A one-hot estimator and N x C x A
quadratic term), each in a fresh process: median time and peak memory (CPU: peak resident set,
CUDA: max_memory_allocated).

    python scripts/bench_folder.py pipeline --dir /tmp/bench_jpegs --images 2000 --workers 1 2 4
    python scripts/bench_folder.py isda [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ the JPEG folder


def make_jpegs(root: Path, images: int, classes: int = 10, seed: int = 0) -> None:
    """Photo-like 500x375 JPEGs (smooth structure at several scales plus fine noise), quality 90."""
    from torchvision.io import encode_jpeg, write_file
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(seed)
    for split, count in (("train", images), ("val", classes)):
        for i in range(count):
            folder = root / split / f"class{i % classes:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            img = torch.zeros(3, 375, 500)
            for cells, weight in ((4, 90.0), (16, 50.0), (64, 25.0)):
                coarse = torch.rand(3, cells * 3 // 4 + 1, cells, generator=g)
                img += weight * TF.resize(coarse, [375, 500], antialias=False)
            img += 12 * torch.randn(3, 375, 500, generator=g)
            write_file(str(folder / f"{i:06d}.jpg"), encode_jpeg(img.clamp(0, 255).to(torch.uint8), quality=90))


# ------------------------------------------------------------------ the pipelines


def authors_loader(root: Path, batch: int, workers: int):
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    data = datasets.ImageFolder(str(root / "train"), tf)
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=workers > 0)


def our_stream(root: Path, batch: int, workers: int):
    from isda_exp.data.cifar_augment import build_augment
    from isda_exp.data.folder import load_folder

    source = load_folder("bench", str(root))
    return source.train_stream(build_augment("baseline", 0), batch, 0, torch.device("cpu"), workers)


def images_per_second(batches, limit: int) -> float:
    """Images per second over the batches after the first (workers started, queues filled)."""
    it = iter(batches)
    next(it)
    seen, tic = 0, time.perf_counter()
    for b, (x, *_) in enumerate(it):
        seen += len(x)
        if b + 2 >= limit:
            break
    return seen / (time.perf_counter() - tic)


def bench_pipeline(args) -> dict:
    if not (args.dir / "train").is_dir():
        print(f"writing {args.images} JPEGs to {args.dir} ...", file=sys.stderr)
        make_jpegs(args.dir, args.images)
    torch.set_num_threads(1)
    limit = args.images // args.batch
    results = []
    for workers in args.workers:
        theirs_loader = authors_loader(args.dir, args.batch, workers)
        ours_stream = our_stream(args.dir, args.batch, workers)
        best = {"authors": 0.0, "ours": 0.0}
        for r in range(args.repeats):  # interleaved: both see the same machine load
            best["authors"] = max(best["authors"], images_per_second(theirs_loader, limit))
            best["ours"] = max(best["ours"], images_per_second(ours_stream.epoch(r), limit))
        cores = max(workers, 1)
        results.append({"workers": workers, "authors_img_s": best["authors"], "ours_img_s": best["ours"],
                        "authors_per_core": best["authors"] / cores, "ours_per_core": best["ours"] / cores,
                        "speedup": best["ours"] / best["authors"]})
        print(f"workers {workers}: authors {best['authors']:.0f} img/s ({best['authors'] / cores:.0f}/core)"
              f"  ours {best['ours']:.0f} img/s ({best['ours'] / cores:.0f}/core)"
              f"  ours/authors {best['ours'] / best['authors']:.2f}x")
    per_core = max(r["ours_per_core"] for r in results)
    print(f"cores to feed {args.gpu_rate:.0f} img/s (an assumed ResNet-50 training rate per GPU): "
          f"{args.gpu_rate / per_core:.1f} with ours, "
          f"{args.gpu_rate / max(r['authors_per_core'] for r in results):.1f} with the authors'")
    return {"machine": machine(), "images": args.images, "batch": args.batch, "rows": results,
            "gpu_rate_assumed": args.gpu_rate}


# ------------------------------------------------------------------ ISDA at ImageNet size


class AuthorsDiagonalISDA(nn.Module):
    """The authors' ImageNet formulation (diagonal covariance), rewritten from its description:
    an N x C x A one-hot estimator and an N x C x A quadratic term."""

    def __init__(self, A: int, C: int):
        super().__init__()
        self.C = C
        self.register_buffer("var", torch.zeros(C, A))
        self.register_buffer("ave", torch.zeros(C, A))
        self.register_buffer("amount", torch.zeros(C))

    @torch.no_grad()
    def update(self, feats, y):
        N, A = feats.shape
        onehot = F.one_hot(y, self.C).to(feats.dtype).view(N, self.C, 1).expand(N, self.C, A)
        by_class = feats.view(N, 1, A).expand(N, self.C, A) * onehot
        count = onehot.sum(0).clamp(min=1)
        ave = by_class.sum(0) / count
        var = ((feats.view(N, 1, A) - ave) * onehot).pow(2).sum(0) / count
        m = onehot.sum(0)
        w = m / (m + self.amount.view(self.C, 1).expand(self.C, A)).clamp(min=1)
        extra = w * (1 - w) * (self.ave - ave).pow(2)
        self.var.mul_(1 - w).add_(var * w + extra)
        self.ave.mul_(1 - w).add_(ave * w)
        self.amount += m[:, 0]

    def forward(self, feats, fc, y, ratio):
        self.update(feats.detach(), y)
        logits = fc(feats)
        W = fc.weight
        diff = W.unsqueeze(0) - W[y].unsqueeze(1)                              # N x C x A
        sigma2 = ratio * (diff.pow(2) * self.var[y].unsqueeze(1)).sum(2)
        return F.cross_entropy(logits + 0.5 * sigma2, y), logits


def isda_worker(impl: str, device: str, steps: int) -> dict:
    import resource

    from isda_exp.losses import ISDALoss
    N, C, A = 64, 1000, 2048
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the same classifier in both processes: the final losses must agree
    fc = nn.Linear(A, C).to(dev)
    feats = torch.randn(N, A, generator=gen).abs().to(dev).requires_grad_()
    ys = [torch.randint(0, C, (N,), generator=gen).to(dev) for _ in range(4)]
    crit = (ISDALoss(A, C, "diagonal") if impl == "ours" else AuthorsDiagonalISDA(A, C)).to(dev)
    times = []
    for s in range(steps + 2):
        tic = time.perf_counter()
        loss = crit(feats, fc, ys[s % 4], 7.5)[0]
        loss.backward()
        value = loss.item()
        if s >= 2:
            times.append(time.perf_counter() - tic)
        feats.grad = fc.weight.grad = fc.bias.grad = None
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "ms": 1000 * statistics.median(times), "peak_mb": peak, "loss": value}


def bench_isda(args) -> dict:
    rows = []
    for impl in ("ours", "authors"):
        out = subprocess.run([sys.executable, __file__, "_isda_worker", impl, args.device, str(args.steps)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{impl:8s} {r['ms']:8.1f} ms/step  peak {r['peak_mb']:8.0f} MB  loss {r['loss']:.6f}")
    ours, authors = (r["loss"] for r in rows)
    print(f"same loss after {args.steps + 2} steps: {abs(ours - authors) <= 1e-4 * abs(authors)} "
          f"(relative difference {abs(ours - authors) / abs(authors):.1e})")
    return {"machine": machine(), "device": args.device, "N": 64, "C": 1000, "A": 2048, "rows": rows}


def machine() -> dict:
    import platform
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_isda_worker":
        print(json.dumps(isda_worker(argv[1], argv[2], int(argv[3]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pipeline")
    p.add_argument("--dir", type=Path, default=Path("/tmp/isda_bench_jpegs"))
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu-rate", type=float, default=3000.0,
                   help="images/s one GPU trains ResNet-50 at (an assumption, e.g. H100 bf16)")
    i = sub.add_parser("isda")
    i.add_argument("--device", default="cpu")
    i.add_argument("--steps", type=int, default=10)
    for q in (p, i):
        q.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    result = bench_pipeline(args) if args.what == "pipeline" else bench_isda(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
