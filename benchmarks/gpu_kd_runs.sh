#!/usr/bin/env bash
# The KD GPU benchmarks on the device machine (../shared/vllm-device/README.md): kd_throughput.py (one chunk of
# 20,000 rows) and kd_scale.py (100,000 rows in 10 chunks), each against a bare LLM.generate in the same run.
# Needs vLLM installed there (/tmp/site, env.sh) and Snakemake (/tmp/site2, snakemake-wheels.txt); nothing else.
# A device command may run 10 minutes, so the steps can go in separate calls on the same (warm) machine:
#
#   bash benchmarks/gpu_kd_runs.sh throughput        # ~5 min: both sides of kd_throughput
#   bash benchmarks/gpu_kd_runs.sh scale-bare        # the anchor of kd_scale (keeps its result in /tmp/kd_scale)
#   bash benchmarks/gpu_kd_runs.sh scale-workflow    # the workflow side, compared with that anchor
#   bash benchmarks/gpu_kd_runs.sh all               # all three, one after another
#
# Each step writes its JSON and its log under $OUT as soon as it ends (default: benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if [ -f .vllm-chunks/bin/env.sh ]; then source .vllm-chunks/bin/env.sh; fi
export PYTHONPATH="/tmp/site2:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=${VLLM_USE_FLASHINFER_SAMPLER:-0}
python3 -c "import vllm, snakemake" || { echo "vLLM and Snakemake must be importable (see ../shared/vllm-device)"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

step() {
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/gpu_kd_runs.log"
  local started=$SECONDS
  if "$@" 2>&1 | tee "$OUT/$name.log"; then status=ok; else status="failed ($?)"; fi
  echo "== $name: $status after $((SECONDS - started)) s" | tee -a "$OUT/gpu_kd_runs.log"
}

case "${1:-all}" in
  throughput) step kd_throughput python3 benchmarks/kd_throughput.py --out "$OUT" --prompts 20000 ;;
  scale-bare) step kd_scale-bare python3 benchmarks/kd_scale.py --out "$OUT" --side bare ;;
  scale-workflow) step kd_scale-workflow python3 benchmarks/kd_scale.py --out "$OUT" --side workflow ;;
  all)
    step kd_throughput python3 benchmarks/kd_throughput.py --out "$OUT" --prompts 20000
    step kd_scale-bare python3 benchmarks/kd_scale.py --out "$OUT" --side bare
    step kd_scale-workflow python3 benchmarks/kd_scale.py --out "$OUT" --side workflow
    ;;
  *) echo "usage: $0 [throughput|scale-bare|scale-workflow|all]"; exit 2 ;;
esac
