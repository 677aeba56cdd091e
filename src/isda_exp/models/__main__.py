"""`python -m isda_exp.models [--num-classes C] [--timm ARCH,ARCH]`: print the zoo's sizes and
training costs (with --timm: those timm architectures' instead, e.g. convnext_nano,efficientnet_b0)."""
import argparse

from ._stats import zoo_table
from .cost import CIFAR_TRAIN, TRAIN_PASSES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m isda_exp.models", description=__doc__)
    parser.add_argument("--num-classes", type=int, default=10, help="classifier width (10 or 100)")
    parser.add_argument("--timm", default=None, help="comma-separated timm architectures to size")
    args = parser.parse_args(argv)
    if args.num_classes < 1:
        parser.error(f"--num-classes must be >= 1, got {args.num_classes}")
    print(f"CIFAR models, C={args.num_classes}; params and FLOPs include the classifier; "
          f"train cost = {TRAIN_PASSES} x forward x {CIFAR_TRAIN:,} x recipe epochs")
    names = [f"timm:{a.strip()}" for a in args.timm.split(",") if a.strip()] if args.timm else None
    if names:
        from ..errors import UserError
        from .timm_nets import check_arch

        for name in names:
            try:
                check_arch(name.split(":", 1)[1])
            except UserError as e:  # a name timm does not know: one line, exit 2
                parser.error(str(e))
    print(zoo_table(args.num_classes, names))


if __name__ == "__main__":
    main()
