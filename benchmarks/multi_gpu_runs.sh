#!/usr/bin/env bash
# The multi-GPU runs of issue 18 on one machine with 2 GPUs, each result JSON written under $OUT as it finishes.
#
# Usage: OUT=DIR benchmarks/multi_gpu_runs.sh [--dry-run] [RUN ...]
#   RUN (default: all, in this order):
#     kd-tp2         KD through the workflow with engine.tensor_parallel_size: 2, against a bare LLM.generate at T=2
#     kd-pp2         the same with engine.pipeline_parallel_size: 2
#     data-parallel  a KD job of two chunks, tp=1: two GPUs against one, workflow and bare
#     icm            ICM in-process at tensor_parallel_size 1 and 2
#     plans          validate-plans against vLLM at T=2 and P=2 (heads, replicated KV heads, uneven layers)
#   --dry-run        the same scripts on the CPU (tiny models, transformers engine): no GPU, no vLLM
#
# Needs, on the GPU machine: vLLM 0.26.0 and Snakemake installed as ../shared/vllm-device/README.md describes
# (this script sources .vllm-chunks/bin/env.sh when it is there, and puts /tmp/site2 first on PYTHONPATH).
# Each run is one Python script of benchmarks/ (see benchmarks/README.md); its log is $OUT/logs/RUN.log, and
# $OUT/multi_gpu_runs.tsv gets a line per run (name, exit status, seconds, command). A run that fails is recorded
# and the next one starts; the exit status is non-zero if any failed. The runs are not timed yet: give each call
# one or two of them, so that a call cut at its time limit loses at most the run in progress.
set -uo pipefail

usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "multi_gpu_runs.sh: $*" >&2; exit 2; }

ALL_RUNS=(kd-tp2 kd-pp2 data-parallel icm plans)
dry_run=""
runs=()
for argument in "$@"; do
  case "$argument" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run="--dry-run" ;;
    kd-tp2|kd-pp2|data-parallel|icm|plans) runs+=("$argument") ;;
    *) die "unknown run '$argument': choose from ${ALL_RUNS[*]} (or --dry-run, --help)" ;;
  esac
done
[ ${#runs[@]} -gt 0 ] || runs=("${ALL_RUNS[@]}")
[ -n "${OUT:-}" ] || die "set OUT to the folder the results go to (OUT=DIR $0 ...)"

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || die "cannot enter $repo"
mkdir -p "$OUT/logs" || die "cannot write to OUT=$OUT"
PYTHON=${PYTHON:-python3}

# vLLM's environment (its site folder, the variables its engine needs there), then Snakemake's site folder first.
if [ -z "$dry_run" ] && [ -f .vllm-chunks/bin/env.sh ]; then
  # shellcheck disable=SC1091
  source .vllm-chunks/bin/env.sh
fi
[ -d /tmp/site2 ] && export PYTHONPATH="/tmp/site2${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# The workflow's rules call `distillery`: where the package is not installed, a launcher of this checkout's.
if ! command -v distillery >/dev/null; then
  launcher=$(mktemp -d)
  printf '#!/bin/sh\nexec %s -m workflow_scripts.cli "$@"\n' "$(command -v "$PYTHON")" > "$launcher/distillery"
  chmod +x "$launcher/distillery"
  export PATH="$launcher:$PATH"
fi

"$PYTHON" -c "import snakemake" 2>/dev/null || die "Snakemake is not importable: install it as ../shared/vllm-device/README.md says"
if [ -z "$dry_run" ]; then
  "$PYTHON" -c "import vllm" 2>/dev/null || die "vLLM is not importable: install the bundle and source .vllm-chunks/bin/env.sh"
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
  [ "$gpus" -ge 2 ] || die "these runs need 2 GPUs; nvidia-smi lists ${gpus}"
fi

# One scratch folder for the KD runs: the 1B-shaped teacher is built once.
kd_work=/tmp/multi-gpu-kd${dry_run:+-dry-run}
kd_workload=(--work "$kd_work")
[ -z "$dry_run" ] && kd_workload+=(--prompts 5000 --gen-batch-size 512 --enforce-eager)

command_of() {
  case "$1" in
    kd-tp2) echo benchmarks/kd_throughput.py --tensor-parallel-size 2 "${kd_workload[@]}" ;;
    kd-pp2) echo benchmarks/kd_throughput.py --pipeline-parallel-size 2 "${kd_workload[@]}" ;;
    data-parallel) echo benchmarks/kd_data_parallel.py --gpus 2 "${kd_workload[@]}" ;;
    icm) echo benchmarks/icm_vllm.py --tensor-parallel-sizes 1,2 --configs batched --skip-server ;;
    plans) echo benchmarks/parallel_plans_vllm.py ;;
  esac
}

failed=0
for run in "${runs[@]}"; do
  # shellcheck disable=SC2207
  command=($(command_of "$run") --out "$OUT" $dry_run)
  echo "== $run: ${command[*]}"
  started=$(date +%s)
  "$PYTHON" "${command[@]}" > "$OUT/logs/$run.log" 2>&1
  status=$?
  seconds=$(( $(date +%s) - started ))
  printf '%s\t%s\t%s\t%s\n' "$run" "$status" "$seconds" "${command[*]}" >> "$OUT/multi_gpu_runs.tsv"
  if [ "$status" -eq 0 ]; then
    echo "   done in ${seconds} s"
  else
    failed=1
    echo "   FAILED (exit ${status}) after ${seconds} s; the log's end:"
    tail -n 15 "$OUT/logs/$run.log" | sed 's/^/   | /'
  fi
done
exit "$failed"
