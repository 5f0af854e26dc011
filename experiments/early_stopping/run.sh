#!/usr/bin/env bash
# Early stopping (issue 19, row 4): overfitting SFT from the demo's pretrained
# model, best-on-dev vs last checkpoint on the test split, 3 seeds.
# Builds runs/demo_base (the demo's pretraining) first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/early_stopping "$@"
