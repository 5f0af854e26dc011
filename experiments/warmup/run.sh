#!/usr/bin/env bash
# Warmup x peak learning rate, 3 seeds (experiment.py; README.md).
# Full run: experiments/warmup/run.sh  (31.5 min measured on 2 shared CPU cores
# at load average 10-15; README.md)
# Tiny run: experiments/warmup/run.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/warmup "$@"
