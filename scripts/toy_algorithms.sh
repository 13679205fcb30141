#!/usr/bin/env bash
# PPO, GRPO and RLOO on configs/toy_algorithms.toml, then one report over the three run
# directories (docs/algorithms.md). Usage: bash scripts/toy_algorithms.sh [OUT_DIR] [extra rlbias run args]
set -euo pipefail
out="${1:-runs}"
shift || true
config=configs/toy_algorithms.toml
rlbias=(python3 -m rlbias_jax.cli)
"${rlbias[@]}" run "$config" --out-dir "$out" --no-report "$@"
"${rlbias[@]}" run "$config" --out-dir "$out" --no-report --set run.name='"toy_algorithms_grpo"' \
  --set algorithm.name='"grpo"' --set ppo.entropy_coef=0.01 "$@"
"${rlbias[@]}" run "$config" --out-dir "$out" --no-report --set run.name='"toy_algorithms_rloo"' \
  --set algorithm.name='"rloo"' --set ppo.entropy_coef=0.01 "$@"
"${rlbias[@]}" report "$out/toy_algorithms_ppo" "$out/toy_algorithms_grpo" "$out/toy_algorithms_rloo" \
  --out "$out/toy_algorithms_report"
