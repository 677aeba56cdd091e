#!/usr/bin/env python
"""The GPU acceptance check: the one command to run the first time a CUDA GPU is available.

    bash scripts/gpu_check.sh            # or: make gpu-check; OUT=dir to choose where it writes

Steps (each bounded in time; the whole check is sized for < 8 minutes on one H100-class GPU):
  tests      pytest -m cuda (the CUDA-marked tests)
  runs       a 2-epoch ResNet-32 run, ISDA on, per augmentation (baseline, cutout, autoaugment) and
             per precision (fp32, bf16, fp16), on 50,000 generated 32x32 images: finishes, finite
  bench      scripts/bench_train.py on the GPU rows of docs/performance.md, and the packing row
  ddp        a 2-rank torchrun run when 2 or more GPUs are present
  syncs      the training step under torch.cuda.set_sync_debug_mode("warn"): each host sync per
             step that remains, with the line that causes it
It writes OUT/gpu_check.json and OUT/gpu_check.md and prints both. Exit 0 when every step passed.
On a machine without a CUDA GPU it says so in one line and exits 3.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUGS = ("baseline", "cutout", "autoaugment")
PRECISIONS = ("fp32", "bf16", "fp16")
NO_GPU_EXIT = 3


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the check, or None."""
    try:
        import torch
    except ImportError as e:
        return f"torch is not importable ({e}); run 'make install' first"
    if not torch.cuda.is_available():
        return (f"no CUDA GPU on this machine (torch {torch.__version__}, "
                f"torch.cuda.is_available() is False); run the check on a GPU machine")
    return None


# ------------------------------------------------------------------ checking a run


def check_run(run_dir: Path, epochs: int) -> dict:
    """A finished run: summary.json present, `epochs` metric rows, every number finite."""
    from isda_exp.rundir.files import METRICS, SUMMARY

    problems = []
    summary_path, metrics_path = run_dir / SUMMARY, run_dir / METRICS
    if not summary_path.is_file():
        problems.append(f"no {SUMMARY}")
    rows = []
    if metrics_path.is_file():
        rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if len(rows) != epochs:
        problems.append(f"{len(rows)} metric rows, expected {epochs}")
    for row in rows:
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            problems.append(f"epoch {row.get('epoch')}: non-finite {', '.join(bad)}")
    last = rows[-1] if rows else {}
    return {"ok": not problems, "problems": problems,
            "train_loss": last.get("train_loss"), "test_error": last.get("test_error"),
            "seconds": sum(r.get("seconds", 0.0) for r in rows)}


# ------------------------------------------------------------------ steps


def run_cmd(cmd: list[str], timeout: float, cwd: Path = ROOT, env: dict | None = None) -> dict:
    tic = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = None, f"timed out after {timeout:.0f} s\n{(e.stdout or '')}{(e.stderr or '')}"
    return {"rc": rc, "seconds": time.perf_counter() - tic, "tail": out[-2000:]}


def step_tests(args) -> dict:
    r = run_cmd([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"], args.budget_tests)
    summary = [ln for ln in r["tail"].splitlines() if " passed" in ln or " failed" in ln
               or " skipped" in ln or " error" in ln]
    return {"ok": r["rc"] == 0, "result": summary[-1] if summary else r["tail"][-300:], **r}


def generated_data(out: Path) -> Path:
    npz = out / "data" / "cifar10.npz"
    if not npz.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "synthetic_npz.py"), str(npz),
                        "--num-classes", "10", "--train", "50000", "--test", "10000"],
                       check=True, capture_output=True)
    return npz


def step_runs(args, out: Path) -> dict:
    """9 runs, the 3 augmentations of a precision at once (ResNet-32 does not fill a big GPU)."""
    from isda_exp.rundir.files import run_path

    npz = generated_data(out)
    workers = max(1, ((os.cpu_count() or 4) - 3) // 3)  # AutoAugment's share of the cores
    rows = []
    for precision in PRECISIONS:
        procs = {}
        for aug in AUGS:
            root = out / "runs" / f"{aug}-{precision}"  # its own directory: never a resume
            cmd = [sys.executable, "-m", "isda_exp", "dataset=cifar10", f"dataset.npz={npz}",
                   "model=resnet32", "isda=on", f"aug={aug}", "trainer.epochs=2",
                   f"trainer.precision={precision}", "trainer.progress=false",
                   f"trainer.num_workers={workers}", f"out_root={root}", "device=cuda"]
            procs[aug] = (root, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True))
        for aug, (root, proc) in procs.items():
            try:
                tail, rc = proc.communicate(timeout=args.budget_run)[0][-300:], proc.returncode
            except subprocess.TimeoutExpired:
                proc.kill()
                tail, rc = f"timed out after {args.budget_run:.0f} s", None
            check = check_run(run_path(root, "cifar10", "resnet32", aug, "isda"), 2)
            if rc != 0:
                check["problems"].insert(0, f"exit {rc}: {tail}")
                check["ok"] = False
            rows.append({"aug": aug, "precision": precision, **check})
    return {"ok": all(r["ok"] for r in rows), "rows": rows}


BENCH_MODELS = ("resnet32", "resnet110", "wrn28_10")
BENCH_SETTINGS = ("fp32", "fp32+cl", "bf16+cl", "fp16+cl", "bf16+cl+compile")


def step_bench(args, out: Path) -> dict:
    """The GPU rows of docs/performance.md, one (model, setting) at a time within the budget (what
    does not fit is listed as not run), then the packing row."""
    bench = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--device", "cuda"]
    quick = ["--steps", "50", "--repeats", "2", "--rounds", "3"]
    deadline = time.perf_counter() + args.budget_bench
    result = {"rows": [], "packing": [], "not_run": [], "failed": []}
    for setting in BENCH_SETTINGS:  # every model in one setting before the next setting
        for model in BENCH_MODELS:
            left = deadline - time.perf_counter()
            if left < 20:
                result["not_run"].append(f"{model} {setting}")
                continue
            path = out / f"bench_{model}_{setting}.json"
            r = run_cmd([*bench, "--models", model, "--settings", setting, *quick,
                         "--json", str(path)], left)
            if r["rc"] == 0 and path.is_file():
                result["rows"] += json.loads(path.read_text())["rows"]
            else:
                result["failed"].append(f"{model} {setting}: {r['tail'][-200:]}")
    (out / "bench_gpu.json").write_text(json.dumps({"rows": result["rows"]}, indent=2) + "\n")
    pack = run_cmd([*bench, "--models", "resnet32", "--settings", "bf16+cl", "--packing", "1", "2",
                    "4", "--seconds", "10", "--json", str(out / "bench_packing.json")],
                   args.budget_packing)
    if pack["rc"] == 0 and (out / "bench_packing.json").is_file():
        result["packing"] = json.loads((out / "bench_packing.json").read_text()).get("packing", [])
    else:
        result["failed"].append(f"packing: {pack['tail'][-200:]}")
    result["ok"] = not result["failed"]
    if result["not_run"]:
        result["result"] = f"not run (time budget): {', '.join(result['not_run'])}"
    return result


def step_ddp(args, out: Path) -> dict:
    import torch

    from isda_exp.rundir.files import run_path

    if torch.cuda.device_count() < 2:
        return {"ok": None, "skipped": f"{torch.cuda.device_count()} GPU: needs 2 or more"}
    npz = generated_data(out)
    torchrun = Path(sys.executable).with_name("torchrun")
    root = out / "ddp"
    r = run_cmd([str(torchrun), "--nproc_per_node=2", "-m", "isda_exp", "dataset=cifar10",
                 f"dataset.npz={npz}", "model=resnet32", "isda=on", "trainer.epochs=2",
                 "trainer.precision=bf16", "trainer.progress=false", f"out_root={root}"],
                args.budget_run)
    check = check_run(run_path(root, "cifar10", "resnet32", "baseline", "isda"), 2)
    if r["rc"] != 0:
        check["problems"].insert(0, f"exit {r['rc']}: {r['tail'][-300:]}")
        check["ok"] = False
    return check


def host_syncs(trainer, steps: int) -> list[dict]:
    """Each synchronizing CUDA call made by `steps` training steps: where (the innermost isda_exp
    frame, and the frame that called it) and how many times per step."""
    import torch

    batches = [b for _, b in zip(range(steps + 1), trainer.stream.epoch(1))]
    trainer.engine.train_step(*batches[0], 0.5)  # warm-up step: cuDNN choices, lazy state
    torch.cuda.synchronize()
    seen: dict[str, int] = {}
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return original(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1] if "isda_exp" in f.filename]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-2:][::-1])
        seen[where or f"{filename}:{lineno}"] = seen.get(where or f"{filename}:{lineno}", 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for x, y in batches[1:]:
                trainer.engine.train_step(x, y, 0.5)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = original
    return [{"where": k, "per_step": v / steps} for k, v in sorted(seen.items(), key=lambda t: -t[1])]


def step_syncs(args, out: Path) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_train import build_trainer

    rows = []
    for precision in ("fp32", "fp16"):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(["model=resnet32", "isda=on", "device=cuda", "dataset=synthetic",
                                     "dataset.train_size=2560", "trainer.batch_size=128",
                                     f"trainer.precision={precision}"], Path(tmp))
        rows.append({"precision": precision, "syncs": host_syncs(trainer, 5)})
    return {"ok": True, "rows": rows}


# ------------------------------------------------------------------ the summary


def status(ok) -> str:
    return {True: "pass", False: "FAIL", None: "skipped"}[ok]


def summarize(result: dict) -> tuple[str, str]:
    """(JSON, Markdown) of a check's result; every step present, its status first."""
    md = [f"# GPU check: {result.get('gpu', '?')}", "",
          f"torch {result.get('torch', '?')}, {result.get('gpus', '?')} GPU(s), "
          f"{result.get('seconds', 0):.0f} s; overall: **{status(result.get('ok'))}**", "",
          "| step | status | detail |", "|---|---|---|"]
    steps = result.get("steps", {})
    for name, step in steps.items():
        detail = step.get("error") or step.get("skipped") or step.get("result") \
            or "; ".join(step.get("failed", [])) or ""
        md.append(f"| {name} | {status(step.get('ok'))} | {str(detail)[:200]} |")
    runs = steps.get("runs", {}).get("rows", [])
    if runs:
        md += ["", "## 2-epoch ResNet-32 runs, ISDA on, 50,000 generated images", "",
               "| aug | precision | status | train loss | test error % | s | problems |",
               "|---|---|---|---|---|---|---|"]
        for r in runs:
            md.append(f"| {r['aug']} | {r['precision']} | {status(r['ok'])} | {fmt(r.get('train_loss'))} "
                      f"| {fmt(r.get('test_error'))} | {fmt(r.get('seconds'), 1)} | "
                      f"{'; '.join(r.get('problems', []))[:200]} |")
    bench = steps.get("bench", {})
    if bench.get("rows"):
        md += ["", "## bench_train.py (fills the GPU rows of docs/performance.md)", "",
               "| model | setting | train img/s | test img/s | ISDA + | loss + | peak MB |",
               "|---|---|---|---|---|---|---|"]
        for r in bench["rows"]:
            md.append(f"| {r['model']} | {r['setting']} | {r['train_img_s']:.0f} | {r['test_img_s']:.0f} "
                      f"| {100 * (r['isda_overhead'] - 1):+.1f}% | "
                      f"{100 * (r['isda_overhead_from_loss'] - 1):+.2f}% | {r['peak_mem_mb']:.0f} |")
    if bench.get("packing"):
        md += ["", "| model | setting | K | total img/s | per run img/s |", "|---|---|---|---|---|"]
        for r in bench["packing"]:
            md.append(f"| {r['model']} | {r['setting']} | {r['pack']} | {r['total_img_s']:.0f} "
                      f"| {r['per_run_img_s']:.0f} |")
    for row in steps.get("syncs", {}).get("rows", []):
        md += ["", f"## Host syncs per training step ({row['precision']}, ResNet-32, ISDA on)", "",
               "| per step | where (innermost isda_exp frame <- its caller) |", "|---|---|"]
        md += [f"| {s['per_step']:g} | {s['where']} |" for s in row["syncs"]] or ["| 0 | none |"]
    return json.dumps(result, indent=2, default=str), "\n".join(md) + "\n"


def fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "outputs" / "gpu_check"))
    p.add_argument("--steps", nargs="+", default=["tests", "runs", "bench", "ddp", "syncs"])
    p.add_argument("--budget-tests", type=float, default=90)
    p.add_argument("--budget-run", type=float, default=90, help="seconds per 2-epoch run")
    p.add_argument("--budget-bench", type=float, default=180, help="seconds for the GPU rows")
    p.add_argument("--budget-packing", type=float, default=60)
    args = p.parse_args()
    reason = no_gpu_reason()
    if reason:
        print(f"gpu_check: {reason}", file=sys.stderr)
        return NO_GPU_EXIT
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
              "torch": torch.__version__, "steps": {}}
    tic = time.perf_counter()
    todo = {"tests": lambda: step_tests(args), "runs": lambda: step_runs(args, out),
            "bench": lambda: step_bench(args, out), "ddp": lambda: step_ddp(args, out),
            "syncs": lambda: step_syncs(args, out)}
    for name in args.steps:
        try:
            result["steps"][name] = todo[name]()
        except Exception as e:  # one broken step must not hide the others' results
            result["steps"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    result["seconds"] = time.perf_counter() - tic
    result["ok"] = all(s.get("ok") is not False for s in result["steps"].values())
    text, md = summarize(result)
    (out / "gpu_check.json").write_text(text + "\n")
    (out / "gpu_check.md").write_text(md)
    print(text)
    print(md)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
