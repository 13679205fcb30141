#!/usr/bin/env bash
# The TRL side of benchmarks/ppo_vs_trl.py runs in its own virtual environment:
# torch (CPU) and trl==1.12.0, the last TRL release with PPOTrainer (trl.experimental.ppo).
# Pins are the versions the benchmark was run with; the environment is made once.
#   bash benchmarks/setup_trl_venv.sh [VENV_DIR]      (default .venv-trl)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-trl}
PYTHON=${PYTHON:-python3}
if "$VENV/bin/python" -c "import trl, torch" >/dev/null 2>&1; then
  exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "torch==2.13.0" "trl==1.12.0" "transformers==5.24.0" "accelerate==1.15.0" "datasets==5.2.0"
"$VENV/bin/python" -c "import trl, torch; print('trl', trl.__version__, 'torch', torch.__version__)"
