#!/usr/bin/env bash
# Distillation (README.md): the teacher once, then the scratch and kd
# students over seeds 0, 1, 2; resumable. Extra arguments go to the sweep
# (e.g. --tiny, --seeds=0, --only=kd).
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/distillation "$@"
