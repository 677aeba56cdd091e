"""`python -m isda_exp.models [--num-classes C]`: print the zoo's sizes and training costs."""
import argparse

from ._stats import zoo_table
from .cost import CIFAR_TRAIN, TRAIN_PASSES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m isda_exp.models", description=__doc__)
    parser.add_argument("--num-classes", type=int, default=10, help="classifier width (10 or 100)")
    args = parser.parse_args(argv)
    if args.num_classes < 1:
        parser.error(f"--num-classes must be >= 1, got {args.num_classes}")
    print(f"CIFAR models, C={args.num_classes}; params and FLOPs include the classifier; "
          f"train cost = {TRAIN_PASSES} x forward x {CIFAR_TRAIN:,} x recipe epochs")
    print(zoo_table(args.num_classes))


if __name__ == "__main__":
    main()
