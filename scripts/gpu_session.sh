#!/usr/bin/env bash
# The first GPU hour, prepared: one script for a lent GPU machine that is reached by calls of at
# most 64 MiB each, stays warm about 30 s after a call, and has no make, no Hydra and no network.
# docs/gpu.md explains every step and the figures it fills in.
#
#   bash scripts/gpu_session.sh prepare     here, once: the wheels Hydra needs -> .whl/, CIFAR-10
#                                           in two parts -> .cifar_parts/1 and /2, each call's size
#   bash scripts/gpu_session.sh check       call 1, carry [".whl", ".cifar_parts/1"]: stores part 1,
#                                           runs the acceptance check (scripts/gpu_check.py, < 6 min)
#   BUDGET=s bash scripts/gpu_session.sh repro
#                                           call 2 (within 30 s of call 1), carry [".whl",
#                                           ".cifar_parts/2"]: joins CIFAR-10, trains Table 1's
#                                           ResNet-32 cell (scripts/repro_resnet32.sh) until s
#                                           seconds after its start (default 540), then reports
#   MINI=1 bash scripts/gpu_session.sh mini both calls in miniature on the CPU (CI runs it)
#
# The two device calls (command, carry, timeout_s), word for word:
#   1. bash scripts/gpu_session.sh check              [".whl", ".cifar_parts/1"]   450
#   2. BUDGET=540 bash scripts/gpu_session.sh repro   [".whl", ".cifar_parts/2"]   600
#      (BUDGET: at most the device time left after call 1, less a minute for the transfers)
# What each call leaves in $OUT (at most 8 files, no folders): call 1 gpu_check.json, gpu_check.md,
# bench_gpu.json, bench_packing.json, session_check.log; call 2 report.md, curves.png, plan.txt,
# repro_progress.json, repro_runs.tgz (every run's metrics, summary, config and log, written again
# every 15 s while the runs train: a call cut off still returns what had finished), session_repro.log.
set -u
cd "$(dirname "$0")/.."
STAGE=${1:-}
MINI=${MINI:-}
SESSION=${SESSION:-/tmp/isda_session}       # what call 1 leaves for call 2 on the warm machine
OUT=${OUT:-outputs/gpu_session}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
START=$(date +%s)
say() { echo "gpu_session: $*" >&2; }
die() { say "error: $*"; exit "${2:-2}"; }

setup() {  # the carried wheels (Hydra, OmegaConf, ANTLR, the joblib launcher), then the imports
  mkdir -p "$SESSION" "$OUT"
  export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  if ls .whl/*.whl >/dev/null 2>&1; then
    if [ "$(ls .whl/*.whl)" != "$(cat "$SESSION/site.wheels" 2>/dev/null)" ]; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SESSION/site" .whl/*.whl || die "installing the carried wheels failed"
      ls .whl/*.whl > "$SESSION/site.wheels"
    fi
    export PYTHONPATH="$SESSION/site:$PYTHONPATH"
  fi
  "$PY" -c "import torch, hydra, omegaconf, hydra_plugins.hydra_joblib_launcher" 2>/dev/null || \
    die "$PY cannot import torch, hydra, omegaconf and the joblib launcher: carry .whl (bash scripts/gpu_session.sh prepare writes it)"
  "$PY" -c "import torch; print('python', __import__('sys').version.split()[0], '| torch', torch.__version__,
'| GPU:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none', '| cores', __import__('os').cpu_count())"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
}

store_part() {  # this call's CIFAR part (a folder of scripts/cifar_parts.py split) -> $SESSION/parts
  local dir=$1
  if [ -d "$dir" ] && ls "$dir"/*.part* >/dev/null 2>&1; then
    mkdir -p "$SESSION/parts" && cp "$dir"/* "$SESSION/parts/" && say "stored $(ls "$dir" | tr '\n' ' ')in $SESSION/parts"
  else
    say "no CIFAR part carried in $dir"
  fi
}

stage_check() {
  setup
  store_part "${PARTS:-.cifar_parts/1}"
  local seconds=${CHECK_S:-300} mini=()
  [ -n "$MINI" ] && mini=(--mini)
  timeout --signal=INT --kill-after=20 $((seconds + 70)) "$PY" scripts/gpu_check.py \
    --out "$SESSION/gpu_check" --deadline "$seconds" "${mini[@]}"
  local status=$?
  for f in gpu_check.json gpu_check.md bench_gpu.json bench_packing.json; do
    [ -f "$SESSION/gpu_check/$f" ] && cp "$SESSION/gpu_check/$f" "$OUT/"
  done
  say "check: exit $status after $(( $(date +%s) - START )) s; $OUT: $(ls "$OUT" | tr '\n' ' ')"
  return $status
}

export_runs() {  # every run's small files as one archive + a progress summary, replaced atomically
  local runs=$SESSION/out/repro_resnet32
  [ -d "$runs" ] || return 0
  (cd "$runs" && find . \( -name metrics.jsonl -o -name summary.json -o -name run_config.json \
      -o -name train.log -o -name failed.json -o -name '*.csv' -o -name report.md \) -print0 |
    tar czf "$OUT/.repro_runs.tgz" --null -T -) && mv "$OUT/.repro_runs.tgz" "$OUT/repro_runs.tgz"
  "$PY" - "$runs" "$OUT/.repro_progress.json" <<'EOF' && mv "$OUT/.repro_progress.json" "$OUT/repro_progress.json"
import json, sys, time
from pathlib import Path
runs = {}
for m in sorted(Path(sys.argv[1]).rglob("metrics.jsonl")):
    rows = [json.loads(line) for line in m.read_text().splitlines() if line.strip()]
    last = rows[-1] if rows else {}
    runs[str(m.parent.relative_to(sys.argv[1]))] = {
        "finished": (m.parent / "summary.json").is_file(), "epochs_done": len(rows),
        "test_error_last": last.get("test_error"), "train_loss_last": last.get("train_loss"),
        "seconds": sum(r.get("seconds", 0.0) for r in rows)}
Path(sys.argv[2]).write_text(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs}, indent=1))
EOF
}

stage_repro() {
  setup
  store_part "${PARTS:-.cifar_parts/2}"
  local data=$SESSION/data
  if [ ! -f "$data/cifar10.npz" ]; then
    "$PY" scripts/cifar_parts.py join "$SESSION/parts" "$data/cifar10.npz" ||
      die "CIFAR-10 is not whole on this machine: call 1 (check, carrying .cifar_parts/1) must run on the same warm machine first (within 30 s)" 4
  fi
  local budget=${BUDGET:-540} margin=${MARGIN:-45}
  local deadline=$(( budget - ($(date +%s) - START) - margin ))
  [ "$deadline" -gt 30 ] || die "BUDGET=$budget s leaves no time to train (margin $margin s)"
  say "training for at most $deadline s, then the report"
  ( while sleep 15; do export_runs; done ) &
  local exporter=$!
  local throughput
  throughput=$(ls "$SESSION"/gpu_check/bench_gpu.json "$SESSION"/gpu_check/bench_packing.json 2>/dev/null | tr '\n' ' ')
  OUT=$SESSION/out DATA=$data SEEDS=${SEEDS:-0} DEADLINE=$deadline THROUGHPUT="$throughput" \
    PY=$PY MINI=$MINI bash scripts/repro_resnet32.sh
  local status=$?
  kill "$exporter" 2>/dev/null; wait "$exporter" 2>/dev/null
  export_runs
  for f in report.md curves.png plan.txt; do
    [ -f "$SESSION/out/repro_resnet32/$f" ] && cp "$SESSION/out/repro_resnet32/$f" "$OUT/"
  done
  say "repro: exit $status after $(( $(date +%s) - START )) s; $OUT: $(ls "$OUT" | tr '\n' ' ')"
  return $status
}

stage_prepare() {  # here, with the network: what the two calls carry
  [ -n "$(ls .whl/*.whl 2>/dev/null)" ] || {
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl hydra-core==1.3.8 omegaconf==2.3.1 hydra-joblib-launcher==1.2.0 &&
    "$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3; } ||  # an sdist: built here
    die "could not fetch the wheels into .whl"
  local npz=${DATA:+$DATA/cifar10.npz}
  if [ -z "$npz" ]; then
    npz=$(mktemp -d)/cifar10.npz
    "$PY" ../shared/data/unpack_cifar.py cifar10 "$npz" ||
      die "give DATA=dir holding cifar10.npz (python ../shared/data/unpack_cifar.py cifar10 dir/cifar10.npz)"
  fi
  rm -rf .cifar_parts && PYTHONPATH=src "$PY" scripts/cifar_parts.py split "$npz" .cifar_parts --parts 2 || exit 2
  for k in 1 2; do
    echo "call $k carries:"; PYTHONPATH=src "$PY" scripts/cifar_parts.py budget .whl ".cifar_parts/$k" || exit 1
  done
  sed -n '/^# The two device calls/,/^#      (BUDGET/p' "$0"
}

stage_mini() {  # both calls in miniature on the CPU, through the same code (stand-in CIFAR arrays)
  MINI=1
  local root
  root=$(mktemp -d)
  SESSION=${SESSION_MINI:-$root/session}
  export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" scripts/synthetic_npz.py "$root/cifar10.npz" --train 256 --test 256 >&2 &&
    "$PY" scripts/cifar_parts.py split "$root/cifar10.npz" "$root/carry" --parts 2 >&2 || exit 2
  local out=$OUT
  OUT=$out/call1 PARTS=$root/carry/1 logged check stage_check || say "check (miniature) exit $?"
  OUT=$out/call2 PARTS=$root/carry/2 START=$(date +%s) logged repro stage_repro
}

logged() {  # a stage, its output also in $OUT/session_NAME.log (back even when the call is cut off)
  local name=$1
  shift
  mkdir -p "$OUT"
  "$@" 2>&1 | tee "$OUT/session_$name.log"
  return "${PIPESTATUS[0]}"
}

case "$STAGE" in
  prepare) stage_prepare ;;
  check) logged check stage_check ;;
  repro) logged repro stage_repro ;;
  mini) stage_mini ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
