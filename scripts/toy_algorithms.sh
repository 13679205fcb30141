#!/usr/bin/env bash
# PPO, GRPO and RLOO on configs/toy_algorithms.toml, then one report over the three run
# directories (docs/algorithms.md). Usage: bash scripts/toy_algorithms.sh [OUT_DIR] [extra rlbias args]
#
# Probing runs once, in the PPO run: extractability depends on the task, the policy's
# architecture and initialisation and the probe settings, never on the RL algorithm, so the
# GRPO and RLOO runs are trained without probing (`rlbias train`) and get copies of the PPO
# run's extractability.csv, mdl.csv and mdl_blocks.csv.
set -euo pipefail
out="${1:-runs}"
shift || true
config=configs/toy_algorithms.toml
rlbias=(python3 -m rlbias_jax.cli)
"${rlbias[@]}" run "$config" --out-dir "$out" --no-report "$@"
for algorithm in grpo rloo; do
  "${rlbias[@]}" train "$config" --out-dir "$out" --no-report --set run.name="\"toy_algorithms_$algorithm\"" \
    --set algorithm.name="\"$algorithm\"" --set ppo.entropy_coef=0.01 "$@"
  cp "$out/toy_algorithms_ppo/"{extractability.csv,mdl.csv,mdl_blocks.csv} "$out/toy_algorithms_$algorithm/"
done
"${rlbias[@]}" report "$out/toy_algorithms_ppo" "$out/toy_algorithms_grpo" "$out/toy_algorithms_rloo" \
  --out "$out/toy_algorithms_report"
