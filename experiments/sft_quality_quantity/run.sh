#!/usr/bin/env bash
# SFT quality vs quantity (issue 19, row 8): a 2x2 of demonstration quality
# (clean / 40% flawed) x quantity (100 / 500) from the demo's pretrained
# model, the same 40 SFT steps in every arm, 3 seeds, measured on the test
# split. Builds runs/demo_base (the demo's pretraining) first if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/sft_quality_quantity "$@"
