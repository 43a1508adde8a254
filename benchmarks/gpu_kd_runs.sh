#!/usr/bin/env bash
# The KD benchmarks of issue 17 on one GPU, in two device calls of at most 10 minutes each:
#
#   OUT=DIR bash benchmarks/gpu_kd_runs.sh throughput   # call 1: kd_throughput.py, one chunk of 20,000 rows of a
#                                                       #   llama3.1-1b-shaped model, 128 new tokens (~5 min)
#   OUT=DIR bash benchmarks/gpu_kd_runs.sh scale        # call 2: kd_scale.py, 100,000 rows in 10 chunks of a small
#                                                       #   Llama, 64 new tokens, one engine job (~5-8 min)
#   OUT=DIR bash benchmarks/gpu_kd_runs.sh --dry-run [throughput|scale]   # the same steps on the CPU, tiny model
#   OUT=DIR bash benchmarks/gpu_kd_runs.sh scale -- --max-tokens 32       # after --: flags for the step's script
#
# Each runs the workflow (snakemake, engine start included) against a bare LLM.generate over the same prompts and
# seeds, in the same call, and prints a table. Its result JSON goes under $OUT as each side ends; its log to
# $OUT/STEP.log, the workflow's job logs to $OUT/STEP-logs/, a line (step, status, seconds) to $OUT/gpu_kd_runs.tsv.
# Needs vLLM 0.26.0 and Snakemake installed as ../shared/vllm-device/README.md says (vLLM under /tmp/site, whose
# .vllm-chunks/bin/env.sh this script sources; Snakemake under /tmp/site2, installed here from .vllm-chunks/smk
# when that folder holds its wheels and /tmp/site2 does not exist yet).
set -uo pipefail

usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "gpu_kd_runs.sh: $*" >&2; exit 2; }

dry_run=""
steps=()
extra=()
while [ $# -gt 0 ]; do
  argument=$1
  shift
  case "$argument" in
    --) extra=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run="--dry-run" ;;
    throughput|scale) steps+=("$argument") ;;
    *) die "unknown step '$argument': choose throughput or scale (or --dry-run, --help)" ;;
  esac
done
[ ${#steps[@]} -gt 0 ] || die "name a step: throughput (call 1) or scale (call 2)"
[ -n "${OUT:-}" ] || die "set OUT to the folder the results go to (OUT=DIR $0 ...)"

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || die "cannot enter $repo"
mkdir -p "$OUT" || die "cannot write to OUT=$OUT"
PYTHON=${PYTHON:-python3}

if [ -z "$dry_run" ]; then
  # shellcheck disable=SC1091
  [ -f .vllm-chunks/bin/env.sh ] && source .vllm-chunks/bin/env.sh
  if [ ! -d /tmp/site2 ] && compgen -G ".vllm-chunks/smk/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/site2 .vllm-chunks/smk/*.whl ||
      die "installing Snakemake's wheels from .vllm-chunks/smk failed"
  fi
fi
[ -d /tmp/site2 ] && export PYTHONPATH="/tmp/site2${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import snakemake" 2>/dev/null || die "Snakemake is not importable: install it as ../shared/vllm-device/README.md says"
if [ -z "$dry_run" ]; then
  "$PYTHON" -c "import vllm" 2>/dev/null || die "vLLM is not importable: install the bundle (../shared/vllm-device/README.md)"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
fi

suffix=${dry_run:+-dry-run}
status=0
for step in "${steps[@]}"; do
  case "$step" in
    throughput) command=("$PYTHON" benchmarks/kd_throughput.py --out "$OUT"); work=/tmp/kd_throughput$suffix ;;
    scale) command=("$PYTHON" benchmarks/kd_scale.py --out "$OUT"); work=/tmp/kd_scale$suffix ;;
  esac
  [ -n "$dry_run" ] && command+=("$dry_run")
  command+=(${extra[@]+"${extra[@]}"})
  echo "== $step: ${command[*]}"
  started=$SECONDS
  "${command[@]}" 2>&1 | tee "$OUT/$step$suffix.log"
  code=${PIPESTATUS[0]}
  [ "$code" -eq 0 ] || status=1
  # The workflow's job logs (engine job, chunk jobs with their progress lines) and Snakemake's own output.
  mkdir -p "$OUT/$step$suffix-logs"
  cp -r "$work/workflow/logs/." "$OUT/$step$suffix-logs/" 2>/dev/null
  cp "$work/workflow/snakemake.log" "$OUT/$step$suffix-logs/" 2>/dev/null
  printf '%s\t%s\t%s\n' "$step$suffix" "$code" "$((SECONDS - started))" | tee -a "$OUT/gpu_kd_runs.tsv"
done
exit $status
