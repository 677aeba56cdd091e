#!/usr/bin/env python
"""Every seed's numbers of a `make mini` directory, as the Markdown table of docs/results.md.

Usage: python scripts/mini_seeds.py outputs/mini
Reads each finished run's summary.json (data only); unfinished or failed runs are listed apart.
"""
import json
import sys
from pathlib import Path


def main(root: str) -> None:
    rows, other = [], []
    for run in sorted(p.parent for p in Path(root).rglob("run_config.json")):
        summary = run / "summary.json"
        if not summary.is_file():
            other.append(run.relative_to(root))
            continue
        s = json.loads(summary.read_text())
        rows.append(f"| {s['dataset']} | {s['method']} | {s['seed']} | {s['test_error_last10']:.2f} | "
                    f"{s['test_error_final']:.2f} | {s['test_error_best']:.2f} | "
                    f"{s['wall_time'] / 60:.1f} |")
    print("| dataset | method | seed | last-10 mean error (%) | final (%) | best (%) | train minutes |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    for run in other:
        print(f"\nnot finished: {run}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/mini")
