"""`python -m isda_exp.evaluate`: evaluate a run directory, a weights file, or extract the weights
of a trusted pickled checkpoint.

    python -m isda_exp.evaluate RUN_DIR [--set dataset.root=DIR] [--csv preds.csv] [--json out.json]
    python -m isda_exp.evaluate --weights FILE --model resnet50 --data DIR [--set KEY=VALUE]
    python -m isda_exp.evaluate --extract CKPT --out weights.safetensors --trust-pickle
"""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m isda_exp.evaluate",
        description="Top-1/top-5 error, loss and per-class error of a run's checkpoint or of a "
                    "weights file on a data set, with the run's own evaluation transform; "
                    "optionally every image's prediction as CSV.")
    p.add_argument("run_dir", nargs="?", help="a run directory (holds .hydra/config.yaml, last.pt)")
    p.add_argument("--weights", help="a weights file or a library weights name (model.pretrained)")
    p.add_argument("--model", help="with --weights: the model choice (resnet50, timm, ...)")
    p.add_argument("--data", help="with --weights: the image folder (DIR/train, DIR/val)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override, e.g. dataset.root=DIR (a run whose data moved), "
                        "model.arch=convnext_nano, dataset.eval_crop=288")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, help="evaluation batch (default: the run's "
                   "trainer.eval_batch_size; the numbers do not depend on it beyond rounding)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--csv", help="write every image's prediction to this CSV file")
    p.add_argument("--json", help="write every figure to this JSON file")
    p.add_argument("--extract", metavar="CKPT", help="write the state dict of a checkpoint that "
                   "pickles objects (the authors' releases) to --out; needs --trust-pickle")
    p.add_argument("--out", help="with --extract: the .safetensors file to write")
    p.add_argument("--trust-pickle", action="store_true", help="with --extract: unpickle the "
                   "checkpoint (it can run code it holds: only for files you trust)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.extract:
            return _extract(args)
        result, ev = _evaluate(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _report(result, ev, args)
    return 0


def _extract(args) -> int:
    from ..models.pretrained import extract_weights

    if not args.out or not args.out.endswith(".safetensors"):
        raise UserError("--extract needs --out FILE.safetensors (the weights are written as data)")
    count = extract_weights(args.extract, args.out, args.trust_pickle)
    print(f"wrote {count} tensors to {args.out}: pass it as model.pretrained={args.out} "
          f"or --weights {args.out}", file=sys.stderr)
    return 0


def _evaluate(args):
    import torch

    from .metrics import evaluate
    from .source import from_run, from_weights

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be >= 1")
    if args.weights:
        if args.run_dir or not args.model or not args.data:
            raise UserError("--weights FILE needs --model NAME and --data DIR (and no run directory)")
        ev = from_weights(args.weights, args.model, args.data, args.overrides, args.device,
                          args.batch_size)
    elif args.run_dir:
        ev = from_run(args.run_dir, args.overrides, args.device, args.batch_size)
    else:
        raise UserError("give a run directory, or --weights FILE --model NAME --data DIR "
                        "(or --extract CKPT --out FILE.safetensors --trust-pickle)")
    return evaluate(ev, keep_rows=bool(args.csv)), ev


def _report(result, ev, args) -> None:
    from ..rundir.files import write_json
    from .metrics import write_csv

    classes = getattr(ev.data, "classes", None)
    print(f"{ev.what}: {result.num_images} images ({ev.data.eval_split}), {result.num_classes} classes")
    print(f"top-1 error {result.test_error:.2f}%  top-5 error {result.test_error_top5:.2f}%  "
          f"loss {result.test_loss:.4f}")
    worst = sorted((e, c) for c, e in enumerate(result.per_class_error) if e is not None)[::-1][:10]
    print("highest per-class error: " + ", ".join(
        f"{classes[c] if classes else c} {e:.1f}% (n={result.per_class_count[c]})" for e, c in worst))
    if args.json:
        write_json(args.json, {"what": ev.what, **result.summary(),
                               "classes": classes or list(range(result.num_classes))})
    if args.csv:
        write_csv(result, args.csv, classes)
    for kind, path in (("figures", args.json), ("predictions", args.csv)):
        if path:
            print(f"wrote {kind} to {path}", file=sys.stderr)
