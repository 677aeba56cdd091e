"""`python -m isda_exp.sweeps.search DIR --param isda.lambda_0`: choose a hyper-parameter on the hold-out.

The paper picks lambda_0 from {0.1, 0.25, 0.5, 0.75, 1} on a 5,000-image hold-out of the training
set (dataset.validation=5000); `make lambda-search` runs that sweep and calls this. Any key of the
run's composed config works (e.g. --param loss.gamma). Per value: mean of each seed's last-10-epoch
hold-out error; the lowest mean is chosen (a tie goes to the first value in sorted order).
Runs in progress or failed are listed, never averaged; runs evaluated on the test set are listed
and left out, since choosing on the test set is what the hold-out is there to avoid.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..report.runs import ReportError, RunRecord, load_runs
from ..rundir.files import CONFIG
from ..rundir.identity import flatten


@dataclass
class Value:
    """One value of the searched parameter and the hold-out errors of its finished seeds."""

    value: object
    errors: dict[int, float]  # seed -> last-10 hold-out error

    @property
    def mean(self) -> float:
        return math.fsum(self.errors.values()) / len(self.errors)

    @property
    def std(self) -> float | None:
        n = len(self.errors)
        if n < 2:
            return None
        return math.sqrt(math.fsum((e - self.mean) ** 2 for e in self.errors.values()) / (n - 1))


def lookup(config: dict, dotted: str):
    """config["a"]["b"] for "a.b"; KeyError naming the missing part."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def collect(root, param: str) -> tuple[list[Value], list[tuple[RunRecord, str]]]:
    """(values with their finished hold-out runs, sorted; runs left out with the reason)."""
    values: dict[object, Value] = {}
    left_out: list[tuple[RunRecord, str]] = []
    reference: tuple[Path, dict] | None = None
    for run in load_runs(root):
        config = run.config  # run_config.json, read once by load_runs
        try:
            value = lookup(config or {}, param)
        except KeyError:
            left_out.append((run, f"no {param} in its {CONFIG}"))
            continue
        rest = {k: v for k, v in flatten(config) if k not in (param, "seed")}
        if reference is None:
            reference = (run.path, rest)
        elif rest != reference[1]:
            keys = sorted(k for k in set(rest) | set(reference[1]) if rest.get(k) != reference[1].get(k))
            raise UserError(f"{run.path} and {reference[0]} differ in more than {param} and the seed "
                            f"({', '.join(keys[:4])}); search the directory of one sweep")
        if run.status != "finished":
            left_out.append((run, run.status.replace("_", " ") + (f": {run.error}" if run.error else "")))
        elif run.summary.get("eval_split") != "holdout":
            left_out.append((run, f"evaluated on the {run.summary.get('eval_split', 'test')} set, not "
                                  "the hold-out (dataset.validation): not used to choose"))
        else:
            entry = values.setdefault(value, Value(value, {}))
            seed = int(run.summary["seed"])
            if seed in entry.errors:
                raise UserError(f"{param}={value} has two finished runs of seed {seed} under {root}; "
                                "search the directory of one sweep")
            entry.errors[seed] = float(run.summary["test_error_last10"])
    numeric = all(isinstance(v, (int, float)) for v in values)
    ordered = sorted(values.values(), key=lambda v: v.value if numeric else str(v.value))
    return ordered, left_out


def choose(values: list[Value]) -> Value:
    """The value with the lowest mean hold-out error; the first in order on a tie."""
    return min(values, key=lambda v: v.mean)  # min keeps the first of equal keys


def render(root, param: str, values: list[Value], left_out: list[tuple[RunRecord, str]]) -> str:
    lines = [f"hold-out search over {param} in {root}: mean ± std (n-1) of the last-10-epoch "
             "hold-out error (%) across seeds", "",
             f"| {param} | seeds | hold-out error | per seed |", "|---|---:|---:|---|"]
    for v in values:
        spread = f"{v.mean:.2f}" if v.std is None else f"{v.mean:.2f} ± {v.std:.2f}"
        seeds = ", ".join(f"{s}: {e:.2f}" for s, e in sorted(v.errors.items()))
        lines.append(f"| {v.value} | {len(v.errors)} | {spread} | {seeds} |")
    best = choose(values)
    lines += ["", f"chosen: {param} = {best.value} (lowest mean hold-out error, {best.mean:.2f}%)"]
    tied = [str(v.value) for v in values if v is not best and v.mean == best.mean]
    if tied:
        lines.append(f"tie: {', '.join(tied)} reach the same mean; the first value in order is taken")
    counts = {len(v.errors) for v in values}
    unfinished = [r for r, _ in left_out if r.status != "finished"]
    if unfinished or len(counts) > 1:
        lines.append(f"provisional: {len(unfinished)} run(s) not finished"
                     + ("; values have different numbers of seeds" if len(counts) > 1 else ""))
    if left_out:
        lines += ["", "not averaged:"] + [f"  {_rel(r.path, root)}: {why}" for r, why in left_out]
    return "\n".join(lines) + "\n"


def _rel(path: Path, root) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m isda_exp.sweeps.search", description=__doc__.splitlines()[0])
    ap.add_argument("runs_dir", help="the sweep's folder (make lambda-search writes outputs/search/...)")
    ap.add_argument("--param", default="isda.lambda_0", help="the searched config key (default isda.lambda_0)")
    args = ap.parse_args(argv)
    try:
        values, left_out = collect(args.runs_dir, args.param)
        if not values:
            listing = "".join(f"  {_rel(r.path, args.runs_dir)}: {why}\n" for r, why in left_out)
            sys.stderr.write(listing)
            raise UserError(f"no finished hold-out runs with {args.param} under {args.runs_dir}; "
                            "run the sweep with dataset.validation=5000 (make lambda-search)")
        sys.stdout.write(render(args.runs_dir, args.param, values, left_out))
    except (UserError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
