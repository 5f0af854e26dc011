#!/usr/bin/env bash
# Scaling laws and Chinchilla sizing: 17 pretraining runs (3 compute budgets
# x 5 model sizes, 2 more sizes at the smallest budget, each run with its own
# cosine schedule) plus 2 replicate runs of one cell, then the approach-2
# and approach-3 fits (summarize in experiment.py): results.md,
# scaling_laws.png and fit.json here. The recorded run used --in_process
# (~29 min on the shared 2-core machine). Extra arguments go to the sweep
# (e.g. --in_process, --tiny, --only=...).
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/scaling_laws "$@"
