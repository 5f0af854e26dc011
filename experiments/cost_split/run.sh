#!/usr/bin/env bash
# The cost split (issue 19, row 16): counts the training FLOPs and reads the
# wall seconds of every stage of `make demo`'s lifecycle run (runs/lifecycle;
# built first, ~15 min on a quiet 2-core machine, if missing). Another
# root: --gin_param="cost_split_cell.base_root='runs/<root>'".
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/cost_split --in_process "$@"
