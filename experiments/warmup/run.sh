#!/usr/bin/env bash
# Warmup x peak learning rate, 3 seeds (experiment.py; README.md).
# Full run: experiments/warmup/run.sh  (~25 min on 2 shared CPU cores)
# Tiny run: experiments/warmup/run.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/warmup "$@"
