#!/usr/bin/env bash
# One short GPU check (about 5 minutes): the toy paper grid end to end and the MFU
# benchmark (GPT-2 small PPO update in bf16; the toy paper model in fp32/bf16).
# Writes JSON to benchmarks/results/ (or $BENCH_RESULTS); then run
# `python3 scripts/make_benchmark_table.py` to put the numbers in the README.
#   bash benchmarks/gpu_check.sh [ITERATIONS]   (default 100, the paper's; fewer to fit a time budget)
set -uo pipefail
cd "$(dirname "$0")/.."
ITERATIONS=${1:-100}
export BENCH_RESULTS=${BENCH_RESULTS:-benchmarks/results}
mkdir -p "$BENCH_RESULTS"
backend=$(python3 -c "import jax; print(jax.default_backend())")
echo "backend: $backend"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
if [ "$backend" != "gpu" ]; then
  echo "gpu_check: JAX sees no GPU (backend $backend); nothing to check" >&2
  exit 2
fi
status=0
timeout 240 python3 benchmarks/gpu_toy_paper.py --config configs/toy_paper.toml --set "ppo.iterations=$ITERATIONS" || status=1
timeout 150 python3 benchmarks/mfu.py --model gpt2-small --dtypes bfloat16 --rounds 3 --name mfu_gpu || status=1
timeout 90 python3 benchmarks/mfu.py --settings paper_4x256 --dtypes float32,bfloat16 --rounds 3 --name mfu_gpu_toy || status=1
ls -l "$BENCH_RESULTS"
exit $status
