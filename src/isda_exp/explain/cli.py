"""`python -m isda_exp.explain RUN_DIR [options]`: the command line over the pipeline."""
from __future__ import annotations

import argparse
import sys

import torch

from ..errors import UserError
from .covariance import SOURCES
from .options import Options


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


HELP = {
    "classes": "classes for the directions: indices or names (CIFAR-10's, an image folder's class folders; default: 3 spread over the labels)",
    "images": "test-set indices for the neighbours (default: the first test image of each class)",
    "lambdas": "multiples of lambda_0 for the keep-rate and bound curves (default %(default)s)",
    "show_lambdas": "multiples of lambda_0 in the neighbours figure (default %(default)s)",
    "directions": "top directions per class (default %(default)s)",
    "strip": "images per direction strip (default %(default)s)",
    "draws": "augmented draws per image in the neighbours figure (default %(default)s)",
    "mc_draws": "Monte Carlo draws per feature for the keep rate and bound (default %(default)s)",
    "keep_images": "training images for the keep rate (default %(default)s)",
    "bound_images": "training features for the bound (default %(default)s)",
    "covariance": "Sigma_c from the checkpoint's ISDA state, or estimated from the training "
                  "features (auto: the checkpoint's for ISDA full/diagonal/shared, else features)",
    "device": "auto, cpu, cuda or cuda:N (default %(default)s)",
    "batch_size": "feature extraction batch (default %(default)s)",
    "seed": "seed of the draws and of the sampled images (default %(default)s)",
}


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _parser() -> argparse.ArgumentParser:
    d = Options()
    p = argparse.ArgumentParser(
        prog="python -m isda_exp.explain",
        description="See what ISDA augments in a finished or checkpointed run: semantic directions, "
                    "augmented neighbours, label-keep rate and the bound. Writes RUN_DIR/explain/ "
                    "(PNGs, explain.json, explain.md) and nothing else.")
    p.add_argument("run_dir", help="the folder of one run (holds .hydra/config.yaml and last.pt)")
    types = {"classes": _names, "images": _ints, "lambdas": _floats, "show_lambdas": _floats,
             "covariance": str, "device": str}
    for name, text in HELP.items():
        kind = types.get(name, int)
        extra = {"choices": SOURCES} if name == "covariance" else {}
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name),
                       help=text, **extra)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the run's config, e.g. --set dataset.npz=data/cifar10.npz "
                        "when the data moved")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    run_dir, threads = args.pop("run_dir"), args.pop("threads")
    try:
        if threads is not None:
            if threads < 1:
                raise UserError(f"--threads {threads} must be >= 1")
            torch.set_num_threads(threads)
        from .pipeline import explain

        result = explain(run_dir, Options(**args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = result["run"]["path"] + "/explain"
    print(f"wrote {out}/explain.md, explain.json and {len(result['figures'])} figures "
          f"({result['timing']['total_s']:.0f} s)", file=sys.stderr)
    return 0
