#!/usr/bin/env bash
# Template mismatch (issue 19, row 9): the demo's SFT model served with its
# own chat template, another one, or its template with one bug; parity
# checker on each; greedy + 3 sampling seeds. Builds runs/demo_base (the
# demo's pretraining + SFT) first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/template_mismatch "$@"
