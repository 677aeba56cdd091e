"""Data pipeline throughput, and what it costs a real training run.

1. Each pipeline alone, as the trainer's TrainStream serves it (images/s):
   baseline and Cutout -- gather + crop/flip (+ hole) batched on the training device;
   AutoAugment         -- persistent DataLoader workers (trainer.num_workers=auto: cores - 1), and
                          one process alone (num_workers=0) for reference.
2. A real training epoch (Trainer.train_epoch: data + model, ISDA on) against the same model's pure
   compute on the same batches, drawn beforehand (Engine.train_step only, no data loading).
   Each is timed --repeats times, the augmentations taking turns, and the fastest kept.
   Targets: baseline epoch <= 1.10 x pure compute; an AutoAugment epoch <= 1.30 x a baseline
   epoch (2-core CPU); on a GPU machine the AutoAugment workers must deliver more images/s than
   the model consumes.

    python scripts/bench_data.py                                  # CPU, ResNet-32, 24 batches
    python scripts/bench_data.py --steps 16 --wait-load 1.0       # shorter, on a shared machine
    python scripts/bench_data.py --device cuda --steps 200 --json bench_data_gpu.json

Real CIFAR-10 is used when ../shared/data holds it (or --npz FILE), else synthetic images.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import (  # noqa: E402
    build_trainer,
    data_overrides,
    machine,
    setting_overrides,
    timed,
    wait_for_quiet,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def real_cifar(tmp: str) -> str | None:
    """Unpack ../shared/data's CIFAR-10 into tmp (about 15 s); None when it is not there."""
    if not (SHARED / "cifar10.pack.npz").is_file():
        return None
    out = Path(tmp) / "cifar10.npz"
    subprocess.run([sys.executable, str(SHARED / "unpack_cifar.py"), "cifar10", str(out)], check=True,
                   capture_output=True)
    return str(out)


def trainer_for(args, aug: str, npz: str | None, tmp: str, workers="auto"):
    overrides = [f"model={args.model}", "isda=on", f"aug={aug}", f"device={args.device}",
                 f"trainer.batch_size={args.batch_size}", "trainer.epochs=2",
                 f"trainer.num_workers={workers}", *setting_overrides(args.setting),
                 *data_overrides(npz, 10, args.steps * args.batch_size, 256)]
    return build_trainer(overrides, Path(tmp))


def pipeline_rate(trainer, min_seconds: float) -> float:
    """Images/s of the trainer's batch stream alone (no model), over whole epochs after a warm-up."""
    images, epoch, elapsed = 0, 1, 0.0

    def drain(e):
        for x, y in trainer.stream.epoch(e):
            pass
    drain(0)  # starts persistent workers, first-call costs
    while not elapsed or elapsed < min_seconds:
        elapsed += timed(lambda: drain(epoch), trainer.run.device)
        images += trainer.stream.num_images
        epoch += 1
    return images / elapsed


def warm_up(trainer, steps: int = 3) -> None:
    for _, (x, y) in zip(range(steps), trainer.stream.epoch(0)):
        trainer.engine.train_step(x, y, 0.5)


def epoch_vs_compute(trainers: dict, repeats: int) -> dict:
    """{aug: (real epoch s, pure compute s on the same batches)}, the fastest of `repeats`.

    The augmentations take turns within each repeat, so a burst of other load on the machine
    slows one repeat of each rather than all repeats of one.
    """
    batches = {aug: list(t.stream.epoch(1)) for aug, t in trainers.items()}

    def compute(trainer, aug):
        for x, y in batches[aug]:
            trainer.engine.train_step(x, y, trainer.run.isda_lambda(1))
    times = {aug: ([], []) for aug in trainers}
    for _ in range(repeats):
        for aug, trainer in trainers.items():
            times[aug][0].append(timed(lambda: trainer.train_epoch(1), trainer.run.device))
            times[aug][1].append(timed(lambda: compute(trainer, aug), trainer.run.device))
    return {aug: (min(epoch), min(pure)) for aug, (epoch, pure) in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="resnet32")
    p.add_argument("--setting", default="fp32", help="as in bench_train.py: fp32|bf16|fp16[+cl][+compile]")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="batches per timed epoch (CPU 24, CUDA 200)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--npz", default=None, help="CIFAR-10 arrays (default: ../shared/data if present)")
    p.add_argument("--json", default=None)
    p.add_argument("--wait-load", type=float, default=None,
                   help="first wait (<= 10 min) for the 1-min load average to drop below this")
    args = p.parse_args()
    wait_for_quiet(args.wait_load)
    args.steps = args.steps or (200 if args.device.startswith("cuda") else 24)
    out = {"machine": machine(args.device), "command": " ".join(sys.argv), "pipelines": {}, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        npz = args.npz or real_cifar(tmp)
        out["data"] = npz and "CIFAR-10" or "synthetic"
        n = args.steps * args.batch_size
        print(f"# {out['machine']}  {args.model} {args.setting}, {args.steps} batches of "
              f"{args.batch_size} ({n} {out['data']} images)", flush=True)
        print(f"{'pipeline':<28}{'img/s':>10}")
        alone = trainer_for(args, "autoaugment", npz, tmp, workers=0)
        rate = pipeline_rate(alone, 0)  # one epoch
        out["pipelines"]["autoaugment (1 process)"] = rate
        print(f"{'autoaugment, 1 process':<28}{rate:>10.0f}", flush=True)
        del alone
        trainers = {}
        for aug in ("baseline", "cutout", "autoaugment"):
            trainer = trainers[aug] = trainer_for(args, aug, npz, tmp)
            rate = pipeline_rate(trainer, 2.0)
            label = aug if aug != "autoaugment" else \
                f"autoaugment, {trainer.stream.loader.num_workers} workers"
            out["pipelines"][label] = rate
            print(f"{label:<28}{rate:>10.0f}", flush=True)
        print(f"\n{'training run (ISDA on)':<28}{'epoch s':>10}{'compute s':>11}{'epoch/compute':>15}"
              f"{'vs baseline':>13}{'train img/s':>13}")
        for trainer in trainers.values():
            warm_up(trainer)
        timings = epoch_vs_compute(trainers, args.repeats)
        base = timings["baseline"][0]
        for aug, (epoch, pure) in timings.items():
            row = {"epoch_s": epoch, "compute_s": pure, "epoch_over_compute": epoch / pure,
                   "epoch_over_baseline": epoch / base, "train_img_s": n / epoch,
                   "compute_img_s": n / pure}
            out["runs"][aug] = row
            print(f"{aug:<28}{epoch:>10.2f}{pure:>11.2f}{epoch / pure:>15.3f}{epoch / base:>13.3f}"
                  f"{n / epoch:>13.0f}", flush=True)
        aa = next(v for k, v in out["pipelines"].items() if "workers" in k)
        need = out["runs"]["baseline"]["compute_img_s"]
        out["autoaugment_headroom"] = aa / need
        print(f"\nAutoAugment workers deliver {aa:.0f} img/s; the model consumes {need:.0f} img/s "
              f"(pure compute): headroom x{aa / need:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
