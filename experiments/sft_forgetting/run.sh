#!/usr/bin/env bash
# SFT forgetting, unconfounded (issue 19, row 10): a 2x2 of SFT learning rate
# {1e-3, 1e-2} x general-mix share {0, 0.2} from the demo's pretrained model,
# 3 seeds; domain gain (dev/test instruction loss, judged test answers) and
# general loss (the frozen general holdout's perplexity), main effects and
# interaction paired over seeds. Builds runs/demo_base (the demo's
# pretraining) first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/sft_forgetting "$@"
